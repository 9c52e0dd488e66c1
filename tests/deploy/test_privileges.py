"""The gateway unit's privilege decision, checked on the real gateway: root with only CAP_NET_ADMIN in its
bounding set (``CapabilityBoundingSet=CAP_NET_ADMIN``, ``NoNewPrivileges=yes``) starts, applies its table and
answers a sandbox's DNS through its resolver; with no capability at all it applies nothing (the control)."""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway.test_preflight_netns import POLICY, upstream
from tests.needs import e2e_missing, missing_binaries, unavailable
from tests.nft.netns import Topology, run, socket_in, topology
from tests.waiting import eventually

pytestmark = [pytest.mark.e2e, pytest.mark.root]

UNIT_BOUNDING_SET = "CAP_NET_ADMIN"


@pytest.fixture(scope="module")
def lab() -> Iterator[Topology]:
    if why := e2e_missing() or missing_binaries("setpriv"):
        unavailable(why)
    with topology() as t, upstream(t.internet):
        yield t


def _gateway(t: Topology, tmp_path: Path, capabilities: str) -> subprocess.Popen[str]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    bounding = "-all" + "".join(f",+{cap.removeprefix('CAP_').lower()}" for cap in capabilities.split())
    argv = [
        "ip", "netns", "exec", t.gateway,
        "setpriv", f"--bounding-set={bounding}", "--no-new-privs",
        sys.executable, "-m", "egress", "gateway", "run",
        "--policy", str(policy), "--sandbox-if", t.sandbox_if, "--uplink-if", t.uplink_if,
        "--upstream-dns", Topology.INTERNET4, "--state-dir", str(tmp_path / "state"), "--workers", "1",
        "--redis-url", "redis://127.0.0.1:1/0",
    ]  # fmt: skip
    with open(tmp_path / "log", "w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, text=True)


def _query(name: str, ident: int) -> bytes:
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", 1, 1)


def test_gateway_runs_with_only_cap_net_admin(lab: Topology, tmp_path: Path) -> None:
    gateway = _gateway(lab, tmp_path, UNIT_BOUNDING_SET)
    log = tmp_path / "log"
    try:
        eventually(lambda: "gateway running" in log.read_text() or gateway.poll() is not None, timeout=120)
        assert gateway.poll() is None, log.read_text()
        with socket_in(lab.sandbox, socket.AF_INET, socket.SOCK_DGRAM) as sandbox:
            sandbox.settimeout(2)

            def answered() -> bool:
                sandbox.sendto(_query("allowed.example", 0x4242), (Topology.GATEWAY4, 53))
                try:
                    return sandbox.recv(512)[:2] == b"\x42\x42"
                except TimeoutError:
                    raise AssertionError("no answer yet") from None

            eventually(answered, timeout=30)
        assert "inet egress" in run(lab.gateway, "nft", "list", "tables")
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=60)
        run(lab.gateway, "nft", "flush", "ruleset")
    text = log.read_text()
    assert "Operation not permitted" not in text and "Permission denied" not in text, text


def test_without_capabilities_nothing_is_applied(lab: Topology, tmp_path: Path) -> None:
    gateway = _gateway(lab, tmp_path, "")
    assert gateway.wait(timeout=120) != 0
    assert "egress" not in run(lab.gateway, "nft", "list", "tables")
