"""Red team: Stratum as msgpack-RPC (the same calls and answers, each a msgpack map instead of a JSON object) on a
raw TCP stream, to a pool that decodes msgpack.

Routes: allowed.lab's plain-HTTP port by name (a host rule; a raw stream there is held to the 16 KiB cap only),
and the pool's own address through a network rule that expects ``[tls, http]``. Ground truth: the pool's log
(``share accepted``) and the internet-side capture.

Why it passes: every stream detector of the mining protocols reads JSON (`egress.detect.jsonrpc`); msgpack
carries the very same method names (``mining.subscribe``, ``mining.authorize``, ``mining.submit``) as plain
length-prefixed strings, which nothing reads outside a JSON text. The exchange is a few hundred bytes, far under
the cap. Nothing is recorded. The same holds for CBOR, bencode, protobuf with string fields: the method names
cross verbatim.
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
_KIT = "from tests.security.redteam_msgpack_kit import {0}; {0}()"


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "redteam.yaml")


@pytest.fixture(scope="module")
def pool(lab: SecurityLab) -> Attacker:
    running = lab.attacker(
        "msgpack-pool", [sys.executable, "-c", _KIT.format("pool_main"), f"{POOL}:3380", f"{ALLOWED}:8080"]
    )
    running.wait_for("listening")
    return running


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_stratum_as_msgpack_rpc(lab: SecurityLab, pool: Attacker, route: str) -> None:
    address, port, host = ROUTES[route]
    before = pool.log().count("share accepted")
    since = time.time()
    with lab.capture(f"msgpack-{route}") as capture:
        done = lab.sandbox_python(_KIT.format("miner_main"), address, str(port), host, timeout=60)
    crossed = capture.result
    assert crossed is not None
    shares = pool.log().count("share accepted") - before
    goal = shares > 0 and "share answered" in done.stdout
    dst = POOL if route == "network-rule" else ALLOWED
    reason = lab.reason_of(since, lambda r: r.dport == port and r.action == "block", timeout=10)
    report(
        f"redteam/msgpack-{route}",
        "mining",
        crossed.bytes_to(dst, port, "tcp") if goal else 0,
        goal,
        reason or None,
    )
    assert not goal, f"the pool accepted {shares} share(s): {done.stdout[-600:]}\npool: {pool.log()[-600:]}"
    assert reason == "mining", (reason, done.stdout[-600:], pool.log()[-600:])
