"""Proxy worker processes as the supervisor runs them (egress.gateway.worker, egress.gateway.workers): a worker
dies with its supervisor even when the supervisor is killed (PR_SET_PDEATHSIG), and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import subprocess
import sys
from pathlib import Path

from egress.gateway.config import WorkerConfig
from egress.gateway.control import Payloads, WorkerLink, socket_pair
from egress.gateway.reload import load_version
from egress.proxy.mitm.ca import ensure_ca
from tests.waiting import eventually, scaled

POLICY = """version: 1
sandboxes:
  agent:
    sources: [10.0.0.0/8]
    mode: enforce
"""

PARENT = r"""
import os, subprocess, sys, time
fd, config = int(sys.argv[1]), sys.argv[2]
argv = [sys.executable, "-m", "egress.gateway.worker", "--config", config, "--control", str(fd)]
child = subprocess.Popen([*argv, "--parent", str(os.getpid())], pass_fds=(fd,))
print(child.pid, flush=True)
time.sleep(600)
"""


def _config(tmp_path: Path) -> Path:
    config = WorkerConfig(
        index=0,
        port=0,
        confdir=str(tmp_path / "ca"),
        bindings_path=str(tmp_path / "bindings.db"),
        lists_dir=None,
        upstream_ca=None,
        redis_url="redis://127.0.0.1:1/0",  # nothing listens: records go to the spool
        gateway="test",
        spool_dir=str(tmp_path / "spool"),
    )
    path = tmp_path / "worker-0.json"
    config.write(path)
    return path


def _gone(pid: int) -> bool:
    """No such process, or a zombie (dead, not reaped yet)."""
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state == "Z"


def test_a_worker_dies_with_its_supervisor_killed_even_while_its_channel_stays_open(tmp_path: Path) -> None:
    mine, theirs = socket_pair()  # this test keeps the supervisor's end open: only the death signal can stop it
    with mine:
        parent = subprocess.Popen(
            [sys.executable, "-c", PARENT, str(theirs.fileno()), str(_config(tmp_path))],
            pass_fds=(theirs.fileno(),),
            stdout=subprocess.PIPE,
            text=True,
        )
        theirs.close()
        assert parent.stdout is not None
        worker = int(parent.stdout.readline())
        try:
            assert not _gone(worker)
            parent.kill()
            parent.wait(timeout=10)
            assert eventually(lambda: _gone(worker), timeout=scaled(30), interval=0.05)
        finally:
            if not _gone(worker):
                os.kill(worker, signal.SIGKILL)
            parent.stdout.close()


def test_a_worker_stops_on_sigterm_and_exits_cleanly(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    version = load_version(tmp_path / "policy.yaml")
    ensure_ca(str(tmp_path / "ca"))
    mine, theirs = socket_pair()
    argv = [sys.executable, "-m", "egress.gateway.worker", "--config", str(_config(tmp_path))]
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [*argv, "--control", str(theirs.fileno()), "--parent", str(os.getpid())],
            pass_fds=(theirs.fileno(),),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    theirs.close()
    link = WorkerLink("proxy-0", mine, Payloads())

    async def scenario() -> int:
        try:
            await asyncio.wait_for(link.prepare(version), 120)
            await asyncio.wait_for(link.commit(version), 120)
            assert await asyncio.wait_for(link.status(), 60) == version.digest  # the ping answers
            worker.send_signal(signal.SIGTERM)  # its channel stays open: the signal alone stops it
            return await asyncio.to_thread(worker.wait, scaled(20))
        finally:
            link.close()

    try:
        assert asyncio.run(scenario()) == 0, log.read_text()
        assert "SIGTERM: stopping" in log.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
