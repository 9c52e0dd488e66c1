"""Red team 6: Stratum in ASN.1 unaligned PER (X.691), whose IA5Strings are 7 bits a character.

`egress.detect.binrpc` reads pool method names as strings of encodings that keep a string's bytes verbatim.
Unaligned PER, a standard ASN.1 encoding (asn1tools' ``uper``, 3GPP's RRC/S1AP/NGAP, V2X, J2735), writes an
unconstrained ``IA5String`` with 7 bits per character and no octet alignment (X.691 §30.5.2-30.5.4), so
``mining.subscribe`` crosses as 14 bytes of which none is an ASCII letter of the name; the JSON, XML and binary
readers see bytes no protocol names (redteam_uper_kit says the schema and the framing).

Rows: the two routes of test_redteam_binsplit (the pool's address through a network rule that expects ``[tls,
http]``, allowed.lab's plain-HTTP port by name) and allowed.lab's 8091 (a host rule whose ``expect`` is ``[ssh]``),
each with a PDU framed by a two-byte length (``binary``) or by five digits and ``:`` (``text``). The network
rule's rows held from the start (refused there as ``tunnel``); the host rule's crossed, answered, no record, until
a host rule's raw streams were held to its ``expect`` (default ``[tls, http]``: `egress.proxy.gate.Gate.expecting`),
which refuses the opening as ``tunnel`` too. Variants tried past that fix (`test_stratum_in_unaligned_per_past_the_
opening`): a TLS record header or a request line first, a keep-alive request first (closed); a printable line
first, WebSocket binary frames (open until `egress.detect.packed` read the names packed at 7 bits: strict xfails
then). Variants past that reader (`test_packed_names_past_the_reader`): 6- and 5-bit alphabets, a 3-bit offset,
text between the PDUs, the PDUs over WebSocket fragments or messages, permessage-deflate.
Ground truth: the pool's log (``share accepted``) and the
internet-side capture. Each row fails if the bypass works.
"""

from __future__ import annotations

import sys
import time

import pytest

from egress.lab.topology import server
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, SecurityLab, report

pytestmark = pytest.mark.security

POOL = server("pool").v4
ALLOWED = server("allowed").v4
ROUTES = {
    "network-rule": (POOL, 3380, POOL),
    "host-rule": ("-", 8080, "allowed.lab"),
    "other-expect": ("-", 8091, "allowed.lab"),
}
"""Where the miner connects: the pool's address through a network rule, allowed.lab's plain-HTTP port (a host rule
with the default ``expect``), and allowed.lab's 8091 (a host rule whose ``expect`` names ssh)."""
_KIT = "from tests.security.redteam_uper_kit import {0}; {0}()"
REFUSED = {"mining", "tunnel", "tls-no-sni"}
"""How a row may be refused: by a detector, at the opening (``tunnel``), or a TLS record header without a
ClientHello to a host rule's port (``tls-no-sni``: no name, no network rule)."""


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "redteam.yaml")


@pytest.fixture(scope="module")
def pool(lab: SecurityLab) -> Attacker:
    listens = [f"{POOL}:3380", f"{ALLOWED}:8080", f"{ALLOWED}:8091"]
    running = lab.attacker("uper-pool", [sys.executable, "-c", _KIT.format("pool_main"), *listens])
    running.wait_for("listening")
    return running


def _run(lab: SecurityLab, pool: Attacker, framing: str, route: str, variant: str) -> tuple[bool, str, int, str]:
    """The miner's run: whether the pool answered a share, the record's reason, the bytes that reached the pool's
    port, and the miner's output."""
    address, port, host = ROUTES[route]
    before = pool.log().count("share accepted")
    since = time.time()
    name = f"uper-{framing}-{route}" + ("" if variant == "plain" else f"-{variant}")
    with lab.capture(name) as capture:
        done = lab.sandbox_python(_KIT.format("miner_main"), framing, address, str(port), host, variant, timeout=60)
    crossed = capture.result
    assert crossed is not None
    shares = pool.log().count("share accepted") - before
    goal = shares > 0 and "share answered" in done.stdout
    dst = POOL if route == "network-rule" else ALLOWED
    reason = lab.reason_of(since, lambda r: r.dport == port and r.action == "block", timeout=10)
    leaked = crossed.bytes_to(dst, port, "tcp") if goal else 0
    report(f"redteam/{name}", "mining", leaked, goal, reason or None)
    return goal, reason, shares, done.stdout[-600:] + "\npool: " + pool.log()[-600:]


@pytest.mark.parametrize("route", ("host-rule", "network-rule", "other-expect"))
@pytest.mark.parametrize("framing", ("binary", "text"))
def test_stratum_in_unaligned_per(lab: SecurityLab, pool: Attacker, framing: str, route: str) -> None:
    """The bypass (host-rule rows; closed: a host rule's raw stream is held to its ``expect``, the default
    refusing an opening that is no protocol), the network rule's rows that held before, and a host rule whose
    ``expect`` names ssh."""
    goal, reason, shares, seen = _run(lab, pool, framing, route, "plain")
    assert not goal, f"the pool accepted {shares} share(s): {seen}"
    assert reason in ("mining", "tunnel"), (reason, seen)


@pytest.mark.parametrize(
    "variant",
    (
        "tls-prefix",
        "http-prefix",
        "text-prefix",
        "keepalive",
        "websocket",
    ),
)
@pytest.mark.parametrize("route", ("host-rule", "network-rule"))
@pytest.mark.parametrize("framing", ("binary", "text"))
def test_stratum_in_unaligned_per_past_the_opening(
    lab: SecurityLab, pool: Attacker, framing: str, route: str, variant: str
) -> None:
    """Variants tried past the fix: the PDUs behind a TLS record header (``tls-prefix``), a request line whose
    head never ends (``http-prefix``) or a 663-byte printable line (``text-prefix``: open), after a whole request
    answered on a keep-alive connection (``keepalive``), in WebSocket binary frames after an upgrade
    (``websocket``: open). Each fails if a share is answered; a refusal must be recorded (``http-prefix``: the
    gate holds the opening, waiting for the head, so nothing is forwarded and the miner gives up; no record is
    needed where no byte crossed)."""
    goal, reason, shares, seen = _run(lab, pool, framing, route, variant)
    assert not goal, f"the pool accepted {shares} share(s): {seen}"
    if variant != "http-prefix":
        assert reason in REFUSED | {"not-allowlisted"}, (reason, seen)


@pytest.mark.parametrize(
    "variant", ("six", "five", "offset", "interleaved", "ws-six", "ws-fragments", "ws-messages", "ws-deflate")
)
@pytest.mark.parametrize("route", ("host-rule", "network-rule"))
@pytest.mark.parametrize("framing", ("binary", "text"))
def test_packed_names_past_the_reader(lab: SecurityLab, pool: Attacker, framing: str, route: str, variant: str) -> None:
    """Variants tried against the packed-name reader (`egress.detect.packed`), after the printable line or in
    WebSocket messages: the strings at 6 bits (``six``, ``ws-six``) or the names at 5 (``five``), each index of
    a permitted alphabet; 3 flag bits first (``offset``: every string 3 bits further); a printable line before
    every PDU (``interleaved``); each PDU in two fragments of one message (``ws-fragments``) or in two messages
    (``ws-messages``: no message holds a whole name), or compressed with permessage-deflate (``ws-deflate``).
    Each fails if a share is answered; a refusal must be recorded as mining (the reader's), or as a refused
    opening or upgrade where the gateway refuses the compression it cannot read."""
    goal, reason, shares, seen = _run(lab, pool, framing, route, variant)
    assert not goal, f"the pool accepted {shares} share(s): {seen}"
    assert reason in REFUSED | {"not-allowlisted"}, (reason, seen)
