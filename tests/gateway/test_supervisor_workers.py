"""Proxy worker processes as the supervisor runs them (egress.gateway.worker, egress.gateway.workers): a worker
dies with its supervisor even when the supervisor is killed (PR_SET_PDEATHSIG), and stops cleanly on SIGTERM; a
lockdown cuts every living worker's open connections, and kills a worker that cannot be told."""

from __future__ import annotations

import asyncio
import os
import pathlib
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from egress.gateway.config import GatewayConfig, WorkerConfig
from egress.gateway.control import Payloads, WorkerControl, WorkerLink, open_stream, socket_pair
from egress.gateway.reload import load_version
from egress.gateway.sdnotify import Notifier
from egress.gateway.supervisor import LOCKDOWN, Supervisor
from egress.gateway.workers import WorkerSlot, cut_open
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


class _Told:
    """A worker slot's channel answered in this event loop by a `WorkerControl` that counts its cuts."""

    def __init__(self) -> None:
        self.cuts: list[str] = []
        self.control = WorkerControl("proxy-0", on_cut=self._cut)
        self.mine, self._theirs = socket_pair()
        self.serving: asyncio.Task[None] | None = None

    def _cut(self, why: str) -> int:
        self.cuts.append(why)
        return 2

    async def start(self) -> None:
        reader, writer = await open_stream(self._theirs)
        self.serving = asyncio.create_task(self.control.serve(reader, writer))


def _slots(tmp_path: Path, count: int) -> list[WorkerSlot]:
    (tmp_path / "policy.yaml").write_text(POLICY)
    version = load_version(tmp_path / "policy.yaml")
    config = GatewayConfig(
        str(tmp_path / "policy.yaml"), "sbx0", "up0", "192.0.2.53", state_dir=str(tmp_path), workers=count
    )
    slots = [WorkerSlot(config, index, Payloads(), lambda: version) for index in range(count)]
    for slot in slots:  # a process of its own that only the cut may end ("sleep" stands in for the worker)
        slot.process = subprocess.Popen(["sleep", "600"])
        slot.serving = True
    return slots


def test_a_lockdown_cuts_every_living_worker_and_kills_one_that_cannot_be_told(tmp_path: Path) -> None:
    """`cut_open`, the supervisor's lock path: a worker that answers aborts its connections and lives on; one whose
    channel is silent (hung) or closed (dead channel) is killed within the deadline; a starting one is left."""
    told, silent, dead, starting = slots = _slots(tmp_path, 4)
    starting.serving = False
    peer = _Told()
    quiet_mine, quiet_theirs = socket_pair()  # nobody reads the other end: the cut is never answered
    dead_mine, dead_theirs = socket_pair()
    dead_theirs.close()
    starting_mine, starting_theirs = socket_pair()
    told.link = WorkerLink("proxy-0", peer.mine, Payloads())
    silent.link = WorkerLink("proxy-1", quiet_mine, Payloads())
    dead.link = WorkerLink("proxy-2", dead_mine, Payloads())
    starting.link = WorkerLink("proxy-3", starting_mine, Payloads())

    async def scenario() -> None:
        await peer.start()
        await cut_open(slots, "lockdown", deadline=scaled(2))

    try:
        asyncio.run(scenario())
        assert peer.cuts == ["lockdown"]
        assert told.process is not None and told.process.poll() is None  # told: it lives on
        for slot in (silent, dead):
            assert slot.process is not None and slot.process.wait(timeout=scaled(10)) == -signal.SIGKILL
        assert starting.process is not None and starting.process.poll() is None  # holds nothing yet: left
        with pytest.raises(BlockingIOError):  # nothing was asked of it
            starting_theirs.recv(1, socket.MSG_DONTWAIT)
    finally:
        for slot in slots:
            if slot.process is not None and slot.process.poll() is None:
                slot.process.kill()
                slot.process.wait()
        for sock in (quiet_theirs, starting_theirs):
            sock.close()


def test_the_supervisors_lock_applies_the_lockdown_and_cuts_the_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`Supervisor.lock` (called by the watcher when a component is down): the lockdown table, then the living
    workers' open connections cut (without the cut, what their relays hold went on out: red team 7)."""
    [slot] = _slots(tmp_path, 1)
    peer = _Told()
    slot.link = WorkerLink("proxy-0", peer.mine, Payloads())
    supervisor = Supervisor.__new__(Supervisor)  # its parts that `lock` uses (the whole needs root and nftables)
    tables: list[str] = []
    monkeypatch.setattr(supervisor, "lockdown", tables.append, raising=False)
    supervisor.slots = [slot]
    supervisor.notify = Notifier.from_environment({})
    supervisor.locked, supervisor._locks, supervisor._cutting = None, 0, set()

    async def scenario() -> None:
        await peer.start()
        supervisor.lock("proxy-1: pid 7 exited with -9")
        assert tables == ["proxy-1: pid 7 exited with -9"] and supervisor.locked is not None
        await asyncio.gather(*supervisor._cutting)

    try:
        asyncio.run(asyncio.wait_for(scenario(), scaled(30)))
        assert peer.cuts == [LOCKDOWN]
        assert slot.process is not None and slot.process.poll() is None
    finally:
        assert slot.process is not None
        slot.process.kill()
        slot.process.wait()
