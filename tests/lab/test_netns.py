"""Building and removing the lab's namespaces for real (root): complete, idempotent, self-healing, clean."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from egress.lab import netns
from egress.lab.topology import Lab
from tests.waiting import eventually, scaled

pytestmark = pytest.mark.root
PREFIX = "egt-lab-n-"


@pytest.fixture
def lab() -> Iterator[Lab]:
    netns.down(PREFIX)
    try:
        yield netns.up(PREFIX)
    finally:
        netns.down(PREFIX)
    assert not set(Lab(PREFIX).namespaces) & netns.namespaces()


def _ping_like(lab: Lab, target: str) -> subprocess.CompletedProcess[str]:
    """TCP connect from the sandbox: refused (nothing listens) proves routing both ways."""
    code = (
        "import socket,sys\n"
        f"s=socket.socket(socket.AF_INET6 if ':' in {target!r} else socket.AF_INET); s.settimeout(2)\n"
        f"try: s.connect(({target!r}, 9))\n"
        "except ConnectionRefusedError: print('refused')\n"
        "except OSError as e: print('failed', e)\n"
    )
    return netns.exec_in(lab.sandbox_ns, [sys.executable, "-c", code], timeout=scaled(10))


def test_up_builds_everything(lab: Lab) -> None:
    assert set(lab.namespaces) <= netns.namespaces()
    assert netns.problems(lab) == []
    assert "nameserver 10.203.1.1" in lab.resolv_conf.read_text()
    assert lab.ca_file.exists()
    assert "complete" in netns.status(PREFIX)


@pytest.mark.parametrize("target", ["198.18.10.1", "198.18.10.9", "2001:db8:10::1", "10.203.2.2"])
def test_sandbox_reaches_the_internet_namespace_through_the_gateway(lab: Lab, target: str) -> None:
    assert _ping_like(lab, target).stdout.strip() == "refused"


def test_resolv_conf_is_the_sandbox_one(lab: Lab) -> None:
    done = netns.exec_in(lab.sandbox_ns, ["cat", "/etc/resolv.conf"], timeout=scaled(10))
    assert done.stdout == lab.resolv_conf.read_text()


def test_up_again_leaves_a_complete_lab_alone(lab: Lab) -> None:
    sleeper = netns.popen_in(lab.gateway_ns, ["sleep", "30"])
    try:
        assert netns.up(PREFIX) == lab
        assert sleeper.poll() is None  # not torn down and rebuilt
    finally:
        sleeper.kill()
        sleeper.wait(scaled(5))


def test_up_repairs_a_half_built_lab(lab: Lab) -> None:
    netns._ip("netns", "del", lab.internet_ns)
    assert netns.problems(lab)
    assert "incomplete" in netns.status(PREFIX)
    netns.up(PREFIX)
    assert netns.problems(lab) == []
    assert _ping_like(lab, "198.18.10.1").stdout.strip() == "refused"


def _started_in(ns: str, proc: subprocess.Popen[bytes]) -> None:
    """Wait (bounded) until ``ip netns exec`` has moved ``proc`` into ``ns``."""
    eventually(lambda: proc.pid in netns._pids(ns), timeout=5, interval=0.01)


def test_down_ends_processes_and_removes_everything(lab: Lab) -> None:
    sleeper = netns.popen_in(lab.internet_ns, ["sleep", "30"])
    _started_in(lab.internet_ns, sleeper)
    netns.down(PREFIX)
    assert sleeper.wait(scaled(5)) is not None
    assert not set(lab.namespaces) & netns.namespaces()
    assert not lab.resolv_conf.parent.exists()
    assert not lab.state_dir.exists()
    netns.down(PREFIX)  # absent lab: nothing to do, no error


def test_command_line(lab: Lab) -> None:
    assert netns.main(["status", "--prefix", PREFIX]) == 0
