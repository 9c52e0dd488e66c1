"""Faults: the UDP gate's thread killed alone (egress/gateway/udpgate.py; the test-only fault hook
``EGRESS_FAULT_HOOKS=udp-gate``, then SIGUSR1: the thread raises at its next turn, as a bug in it would).

While an agent sends WireGuard handshakes to an allowed UDP network, a new flow every tenth of a second, the gate
dies: the supervisor must notice, lock down, start a new gate and open again, and no handshake may reach the
server at any moment (no reader: the kernel drops what the table queues; docs/nftables.md). A benign datagram
crosses before the fault and after the recovery (the gate is back, not the UDP closed for good).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

import pytest

from egress.gateway.components import FAULT_HOOKS_ENV
from egress.lab.topology import server
from tests.security.harness import POLICIES, SecurityLab, open_lab, report_fault
from tests.security.redteam_surfaces_kit import MARK
from tests.waiting import eventually, scaled

pytestmark = pytest.mark.security

KIT = "from tests.security.redteam_surfaces_kit import {0}; {0}()"
NETWORK = server("pool")
PORT = 4031
"""The last port redteam_udp_variants.yaml allows (test_redteam_udp_variants.py uses the others)."""
BENIGN = (
    "import socket, sys; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
    "s.sendto(bytes.fromhex('000100002112a442') + b'b' * 12, (sys.argv[1], int(sys.argv[2])))"
)
"""One STUN binding request (20 bytes): what the gate lets through."""


def _log(lab: SecurityLab) -> str:
    return (lab.logs / "gateway.log").read_text(errors="replace")


def _benign_crosses(lab: SecurityLab, sink_log: Callable[[], str]) -> bool:
    before = sink_log().count("received 20 bytes")
    lab.sandbox_python(BENIGN, NETWORK.v4, str(PORT))
    return bool(eventually(lambda: sink_log().count("received 20 bytes") > before, timeout=scaled(10), interval=0.2))


def test_the_udp_gate_killed_alone_lets_nothing_through_and_comes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_HOOKS_ENV, "udp-gate")
    with open_lab(POLICIES / "redteam_udp_variants.yaml", workers=1) as lab:
        sink = lab.attacker("udp-gate-sink", [sys.executable, "-c", KIT.format("udp_sink_main"), NETWORK.v4, str(PORT)])
        sink.wait_for("listening")
        with lab.capture("fault-udp-gate") as capture:
            assert _benign_crosses(lab, sink.log)  # control: the gate lets the benign through
            loop = lab.attacker(
                "udp-loop", [sys.executable, "-c", KIT.format("udp_loop_main"), "wireguard", NETWORK.v4, str(PORT)],
                where="sandbox",
            )  # fmt: skip
            loop.wait_for("sent 10")
            gateway = lab.run.gateway
            assert gateway is not None
            opened = _log(lab).count("in force again")
            os.kill(gateway.pid, signal.SIGUSR1)

            def noticed() -> bool:
                text = _log(lab)
                assert "udp gate is down" in text, text[-2000:]
                return "LOCKDOWN" in text.split("udp gate is down", 1)[1]

            locked = eventually(noticed, timeout=scaled(60), interval=0.2)
            eventually(lambda: "udp gate recovered in" in _log(lab), timeout=scaled(120), interval=0.2)
            eventually(lambda: _log(lab).count("in force again") > opened, timeout=scaled(60), interval=0.2)
            back = _benign_crosses(lab, sink.log)
            loop.stop()
        sent = loop.log().count("sent ")
        text = _log(lab)
    assert capture.result is not None
    marked = sink.log().count("marker yes")
    # the handshakes' datagrams to the server (ICMP errors the sandbox sends about the server's answers to closed
    # sockets quote those answers, which carry the marker too: not what the agent sent)
    sent_to_server = capture.result.payload.get(("udp", NETWORK.v4, PORT), b"")
    leaked = sent_to_server.count(MARK) * 148
    note = (
        f"SIGUSR1 with {FAULT_HOOKS_ENV}=udp-gate: lockdown {'yes' if locked else 'no'}; ~{sent * 10} WireGuard "
        f"handshakes from new flows sent around the fault, {marked} reached the server; benign back after: {back}"
    )
    report_fault("udp gate thread (dies alone)", 1, int(not marked), leaked, "yes" if back else "no", note)
    assert not marked and MARK not in sent_to_server, note
    assert locked and back and "GATEWAY FAILED" not in text, note
