"""`tests.security.interrupt`: a pytest run told to stop (SIGTERM, SIGHUP) tears its labs down first.

A real pytest process runs a module whose module-scoped fixture stands in for a lab (a child process started in
setup and stopped in teardown, as `lab_factory`'s labs are) and whose test hangs like a failing row's waits; the
test here signals it and judges by what is left: the child must be gone and the teardown must have run. Without
`terminated_as_interrupt`, SIGTERM ends pytest at once and the child lives on (a lockdown row run by hand left its
gateway, site, upload and tcpdump running)."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

import pytest

from tests.waiting import eventually

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODULE = """
import os, pathlib, subprocess, sys, time
import pytest
from tests.security.interrupt import terminated_as_interrupt

STATE = pathlib.Path({state!r})

@pytest.fixture(scope="module")
def lab():
    with terminated_as_interrupt():
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        (STATE / "child").write_text(str(child.pid))
        try:
            yield child
        finally:
            child.terminate()
            child.wait(10)
            (STATE / "down").write_text("torn down")

def test_a_row_that_hangs(lab):
    (STATE / "ready").write_text("1")
    while True:
        time.sleep(0.05)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return pathlib.Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_stopped_pytest_tears_its_lab_down_first(tmp_path: pathlib.Path, signum: int) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (tmp_path / "test_row.py").write_text(MODULE.format(state=str(state)))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "test_row.py"]
    pytest_run = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        eventually(lambda: (state / "ready").exists() or None, timeout=60)
        child = int((state / "child").read_text())
        pytest_run.send_signal(signum)
        output = pytest_run.communicate(timeout=60)[0].decode(errors="replace")
    finally:
        if pytest_run.poll() is None:
            pytest_run.kill()
            pytest_run.wait()
    assert (state / "down").exists(), output
    assert not _alive(child), output
    assert pytest_run.returncode != 0, output  # stopped, not passed
