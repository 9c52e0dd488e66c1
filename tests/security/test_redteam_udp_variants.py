"""Red team 10b's UDP network rule, as the attacker who knows the UDP gate reads it (egress/gateway/udpgate.py).

The five payloads of tests/security/test_redteam_udp_allowed.py (WireGuard's handshake initiation, a DTLS
ClientHello, a QUIC Initial, Stratum's ``mining.submit`` and XMRig's ``login`` as JSON lines), sent so as to slip
past a per-datagram look: the pool messages cut over three datagrams of one flow; every payload after junk and a
benign STUN request on its flow; after a benign first flow, from a new source port; over IPv6 to the network's
IPv6 twin; and a flood (5,000 datagrams from 50 flows at once) that would overflow the queue: a full queue must
drop, never accept. Each attempt has its own port on the allowed network (the policy lists 24), its own sink
there, and is judged by what reaches that sink (the marker, or every piece of a split message) and by its records.
"""

from __future__ import annotations

import re
import sys
import time

import pytest

from egress.lab.topology import server
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, SecurityLab, report
from tests.security.redteam_surfaces_kit import MARK
from tests.waiting import eventually

pytestmark = pytest.mark.security

KIT = "from tests.security.redteam_surfaces_kit import {0}; {0}()"
NETWORK = server("pool")
KINDS = ("wireguard", "dtls", "quic", "stratum", "xmrig")
ROWS = (
    [("split", k) for k in ("stratum", "xmrig")]
    + [("junk-first", k) for k in KINDS]
    + [("second-flow", k) for k in KINDS]
    + [("ipv6", k) for k in KINDS]
    + [("flood", k) for k in ("stratum", "wireguard")]
    + [("split-bom", k) for k in ("stratum", "xmrig")]
    + [("split-v6", "stratum"), ("unfinished", "stratum"), ("two-flows", "stratum"), ("held-volume", "stratum")]
)
PORTS = {row: 4000 + index for index, row in enumerate(ROWS)}
HELD = ("split", "split-bom", "split-v6", "unfinished", "held-volume")
"""Rows against the gate's hold of split text messages: not one piece may reach the server."""
BENIGN_PORT = 4030


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "redteam_udp_variants.yaml")


def _sink(lab: SecurityLab, address: str, port: int) -> Attacker:
    running = lab.attacker(f"udpv-{port}", [sys.executable, "-c", KIT.format("udp_sink_main"), address, str(port)])
    running.wait_for("listening")
    return running


@pytest.mark.parametrize(("variant", "kind"), ROWS, ids=[f"{v}-{k}" for v, k in ROWS])
def test_the_payload_sent_to_slip_past_the_udp_gate_does_not_reach_the_server(
    lab: SecurityLab, variant: str, kind: str
) -> None:
    port = PORTS[(variant, kind)]
    address = NETWORK.v6 if variant in ("ipv6", "split-v6") else NETWORK.v4
    sink = _sink(lab, address, port)
    since = time.time()
    how = "split" if variant == "split-v6" else variant
    with lab.capture(f"udp-variant-{variant}-{kind}") as capture:
        if variant == "ipv6":
            done = lab.sandbox_python(KIT.format("udp_send_main"), kind, address, str(port), timeout=60)
        else:
            done = lab.sandbox_python(KIT.format("udp_variant_main"), how, kind, address, str(port), timeout=90)
    crossed = capture.result
    assert crossed is not None
    sent = re.search(r"sent (\d+), answers (\d+)(?:, benign (\d+))?", done.stdout)
    assert sent is not None, done.stdout + done.stderr
    answers, benign = int(sent.group(2)), int(sent.group(3) or 0)
    heard = [line for line in sink.log().splitlines() if line.startswith("received")]
    marked = sum("marker yes" in line for line in heard)
    # the goal: the payload's datagram crossed (marked, or answered: the server answers what it gets); against the
    # hold (HELD), any piece of the message; on two flows, the piece that opens the message (a pool reads a flow)
    if variant in HELD:
        goal = bool(heard)
    elif variant == "two-flows":
        goal = any(line.split("head ")[-1].startswith("7b") for line in heard)
    else:
        goal = bool(marked or answers)
    leaked = crossed.bytes_to(address, port, "udp")
    reasons = lab.reasons_to(since, address, port)
    note = f"sent {sent.group(1)}; server heard {len(heard)} datagrams, {marked} with the marker"
    report(f"redteam10/udp-{variant}-{kind}", "udp-allowed", leaked, goal, ",".join(reasons) or None, note)
    assert not goal, note
    if variant in HELD:
        assert leaked == 0, note
    if variant != "two-flows":  # there the pieces that open no message cross as unframed text (docs/security.md)
        assert MARK not in crossed.payload.get(("udp", address, port), b""), note  # the datagrams to the server
    assert reasons, f"{variant} {kind}: refused datagrams left no record"
    if variant in ("junk-first", "second-flow"):
        assert benign == 3, "control: the benign datagrams before the payload crossed and were answered"


@pytest.mark.parametrize("how", ["split", "split-now"])
def test_a_benign_message_split_over_datagrams_crosses_whole_and_in_order(lab: SecurityLab, how: str) -> None:
    """The control for the hold: a JSON-RPC line no detector names, cut in three, reaches the server, in order.
    Spaced 0.5 s apart, its first piece is held across the supervisor's heartbeats: until stop 30 each one deleted
    the guard table, and the kernel dropped the held piece with every other queued packet."""
    address = NETWORK.v4
    port = BENIGN_PORT - (how == "split-now")  # 4029: the faults test has 4031
    sink = _sink(lab, address, port)
    done = lab.sandbox_python(KIT.format("udp_variant_main"), how, "benign", address, str(port))
    assert "sent 3" in done.stdout, done.stdout + done.stderr
    heads: list[str] = []

    since = time.time() - 30

    def heard_all() -> bool:
        heads[:] = [line.split("head ")[-1] for line in sink.log().splitlines() if line.startswith("received")]
        records = [(r.reason, r.evidence) for r in lab.records(since) if r.dport == port]
        assert len(heads) == 3, f"heard {heads}; client {done.stdout!r}; records {records}"
        return True

    eventually(heard_all, timeout=10.0)
    assert heads[0].startswith("7b"), heads  # the opening piece first: released in order
