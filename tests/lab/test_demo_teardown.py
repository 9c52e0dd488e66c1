"""`egress.lab.demo`: a lab is torn down whole whatever goes wrong while stopping it (no root: the namespaces and
processes are stand-ins). A lockdown row run by hand once left its gateway, site, upload and tcpdump running: an
exception in the middle of stopping (a test's timeout firing there) skipped everything after it."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from egress.lab import demo, netns, servers
from egress.lab.topology import Lab


class Interrupted(BaseException):
    """What pytest-timeout raises in the main thread (a `BaseException`, like pytest's ``Failed``)."""


def test_a_failure_stopping_the_gateway_still_stops_the_servers_and_takes_the_namespaces_down(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    downs: list[str] = []
    monkeypatch.setattr(netns, "up", Lab)
    monkeypatch.setattr(netns, "down", downs.append)
    started: list[subprocess.Popen[bytes]] = []

    def start(run: demo.GatewayRun) -> None:
        run.processes = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(2)]
        started.extend(run.processes)

    def stop_gateway(run: demo.GatewayRun) -> None:
        raise Interrupted("timeout while the gateway was stopping")

    monkeypatch.setattr(demo.GatewayRun, "start", start)
    monkeypatch.setattr(demo.GatewayRun, "stop_gateway", stop_gateway)
    with pytest.raises(Interrupted), demo.running_gateway("egt-td-", tmp_path / "policy.yaml"):
        pass
    assert [process.poll() is not None for process in started] == [True, True]
    assert downs == ["egt-td-"]


def test_a_failure_stopping_one_server_still_stops_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    run = demo.GatewayRun(Lab("egt-td-"), pathlib.Path("policy.yaml"))
    run.processes = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(3)]
    real = servers.stop

    def stop(process: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
        if process is run.processes[1]:  # type: ignore[index]
            raise Interrupted("timeout")
        real(process, timeout)

    monkeypatch.setattr(servers, "stop", stop)
    with pytest.raises(Interrupted):
        run.stop()
    assert [process.poll() is not None for process in run.processes] == [True, False, True]
    real(run.processes[1])
