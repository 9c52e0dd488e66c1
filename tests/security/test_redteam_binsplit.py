"""Red team 4: Stratum in standard binary encodings whose method names are not one length-prefixed string.

`egress.detect.binrpc` (red team 3's fix) found ``mining.subscribe`` and the other pool names only where the
byte(s) just before the name give its length. Two standard encodings write a string otherwise (closed: binrpc
joins CBOR's chunks and reads a length then a type, docs/security.md "Fourth round"):

- ``cbor``: an indefinite-length CBOR text string (RFC 8949 §3.2.3), ``7f 68 "mining.s" 68 "ubscribe" ff``: the
  name is cut in chunks, each length-prefixed, that every CBOR decoder joins. No chunk holds ``mining.`` and a
  whole method name, so the anchor never matches.
- ``msgext``: msgpack ext8 (``c7 L T bytes``): the byte before the name is the ext type ``T`` (1 here), not ``L``.

The variants past the fix (redteam_binsplit_kit): ``cbor1`` (byte strings of one-byte chunks, an empty chunk
before each), ``fixext`` (msgpack fixext, NUL-padded, a printable ext type) and ``trickle`` (``cbor`` one byte a
TCP segment: every name across packets, on each route's reassembly).

Routes as test_redteam_msgpack: the pool's address through a network rule that expects ``[tls, http]`` and
allowed.lab's plain-HTTP port by name. Ground truth: the pool's log (``share accepted``) and the internet-side
capture. Each row fails if the bypass works.
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
MODES = ("cbor", "msgext", "cbor1", "fixext", "trickle")
_KIT = "from tests.security.redteam_binsplit_kit import {0}; {0}()"


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "redteam.yaml")


@pytest.fixture(scope="module")
def pool(lab: SecurityLab) -> Attacker:
    running = lab.attacker(
        "binsplit-pool", [sys.executable, "-c", _KIT.format("pool_main"), f"{POOL}:3380", f"{ALLOWED}:8080"]
    )
    running.wait_for("listening")
    return running


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("mode", MODES)
def test_stratum_names_not_one_prefixed_string(lab: SecurityLab, pool: Attacker, mode: str, route: str) -> None:
    address, port, host = ROUTES[route]
    before = pool.log().count("share accepted")
    since = time.time()
    with lab.capture(f"binsplit-{mode}-{route}") as capture:
        done = lab.sandbox_python(_KIT.format("miner_main"), mode, address, str(port), host, timeout=60)
    crossed = capture.result
    assert crossed is not None
    shares = pool.log().count("share accepted") - before
    goal = shares > 0 and "share answered" in done.stdout
    dst = POOL if route == "network-rule" else ALLOWED
    reason = lab.reason_of(since, lambda r: r.dport == port and r.action == "block", timeout=10)
    report(
        f"redteam/binsplit-{mode}-{route}",
        "mining",
        crossed.bytes_to(dst, port, "tcp") if goal else 0,
        goal,
        reason or None,
    )
    assert not goal, f"the pool accepted {shares} share(s): {done.stdout[-600:]}\npool: {pool.log()[-600:]}"
    assert reason == "mining", (reason, done.stdout[-600:], pool.log()[-600:])
