"""Red team 6: Stratum in ASN.1 BER whose strings are in constructed form (segments), past `egress.detect.binrpc`.

binrpc joins CBOR's indefinite-length strings (red team 4) but no other encoding's segmented strings. ASN.1 BER
(X.690 §8.7.3, §8.23.6) lets any OCTET STRING or character string be sent *constructed*: ``2c 80``, then OCTET
STRING segments ``04 L bytes``, then ``00 00`` (or a definite length). Every BER decoder joins the segments;
pyasn1 writes this with ``maxChunkSize``, and CER requires it for strings over 1,000 bytes. So
``mining.subscribe`` is ``2c 80 04 08 "mining.s" 04 08 "ubscribe" 00 00``: no segment holds a whole name, and
``mining.s`` followed by ``04 08`` is no name binrpc knows (redteam_ber_kit says the schema and the modes).

Rows: ``seg8`` (8-byte segments, indefinite lengths), ``seg1`` (one-byte segments), ``definite`` (4-byte
segments, definite lengths), on two routes as test_redteam_binsplit: the pool's address through a network rule
that expects ``[tls, http]`` and allowed.lab's plain-HTTP port by name. Ground truth: the pool's log (``share
accepted``) and the internet-side capture. Each row fails if the bypass works.
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
}
MODES = ("seg8", "seg1", "definite")
_KIT = "from tests.security.redteam_ber_kit import {0}; {0}()"


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "redteam.yaml")


@pytest.fixture(scope="module")
def pool(lab: SecurityLab) -> Attacker:
    running = lab.attacker(
        "ber-pool", [sys.executable, "-c", _KIT.format("pool_main"), f"{POOL}:3380", f"{ALLOWED}:8080"]
    )
    running.wait_for("listening")
    return running


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("mode", MODES)
def test_stratum_in_ber_constructed_strings(lab: SecurityLab, pool: Attacker, mode: str, route: str) -> None:
    address, port, host = ROUTES[route]
    before = pool.log().count("share accepted")
    since = time.time()
    with lab.capture(f"ber-{mode}-{route}") as capture:
        done = lab.sandbox_python(_KIT.format("miner_main"), mode, address, str(port), host, timeout=60)
    crossed = capture.result
    assert crossed is not None
    shares = pool.log().count("share accepted") - before
    goal = shares > 0 and "share answered" in done.stdout
    dst = POOL if route == "network-rule" else ALLOWED
    reason = lab.reason_of(since, lambda r: r.dport == port and r.action == "block", timeout=10)
    report(
        f"redteam/ber-{mode}-{route}",
        "mining",
        crossed.bytes_to(dst, port, "tcp") if goal else 0,
        goal,
        reason or None,
    )
    assert not goal, f"the pool accepted {shares} share(s): {done.stdout[-600:]}\npool: {pool.log()[-600:]}"
    assert reason == "mining", (reason, done.stdout[-600:], pool.log()[-600:])
