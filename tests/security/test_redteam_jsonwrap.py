"""Red team 6: Stratum's JSON-RPC calls as a string inside another document (JSON or XML), in HTTP bodies.

The JSON readers (`egress.detect.jsonrpc`, the gateway's `egress.proxy.mitm.inspect` bodies) read JSON text, and
escaped keys inside it; `egress.detect.xmlrpc` reads XML-RPC and SOAP. A call that is itself the *value* of a
string is read by none of them, while the pool's standard library unwraps it in one call:

- ``jsonstr``: ``{"payload": "{\\"id\\": 1, \\"method\\": \\"mining.subscribe\\", ...}"}`` (a message encoded
  twice, as a queue's or a webhook's envelope holds it);
- ``xmltext``: ``<rpc><payload>{"id": 1, "method": ...}</payload></rpc>``;
- ``xmlattr``: ``<rpc payload="{&quot;id&quot;: 1, ...}"/>`` (any XML writer's attribute escaping).

Held today (the gateway blocks both XML rows, ``mining``, 0 bytes: kept as regression rows); ``jsonstr`` passes on
both routes. (The capture scanner's engine, ``egress scan``, misses all three in an HTTP body.)

redteam_jsonwrap_kit holds the pool and the miner. Rows: each wrapping on allowed.lab's plain-HTTP port by name
and on the pool's address through the network rule that expects ``[tls, http]``. Ground truth: the pool's log
(``share accepted``) and the internet-side capture. Each row fails if the bypass works.
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
_KIT = "from tests.security.redteam_jsonwrap_kit import {0}; {0}()"


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "redteam.yaml")


@pytest.fixture(scope="module")
def pool(lab: SecurityLab) -> Attacker:
    running = lab.attacker(
        "jsonwrap-pool", [sys.executable, "-c", _KIT.format("pool_main"), f"{POOL}:3380", f"{ALLOWED}:8080"]
    )
    running.wait_for("listening")
    return running


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("how", ("jsonstr", "xmltext", "xmlattr"))
def test_stratum_wrapped_in_a_string(lab: SecurityLab, pool: Attacker, how: str, route: str) -> None:
    address, port, host = ROUTES[route]
    before = pool.log().count("share accepted")
    since = time.time()
    with lab.capture(f"jsonwrap-{how}-{route}") as capture:
        done = lab.sandbox_python(_KIT.format("miner_main"), address, str(port), host, how, timeout=60)
    crossed = capture.result
    assert crossed is not None
    shares = pool.log().count("share accepted") - before
    goal = shares > 0 and "share answered" in done.stdout
    dst = POOL if route == "network-rule" else ALLOWED
    reason = lab.reason_of(since, lambda r: r.dport == port and r.action == "block", timeout=10)
    leaked = crossed.bytes_to(dst, port, "tcp") if goal else 0
    report(f"redteam/jsonwrap-{how}-{route}", "mining", leaked, goal, reason or None)
    assert not goal, f"the pool accepted {shares} share(s): {done.stdout[-600:]}\npool: {pool.log()[-600:]}"
    assert reason == "mining", (reason, done.stdout[-600:], pool.log()[-600:])
