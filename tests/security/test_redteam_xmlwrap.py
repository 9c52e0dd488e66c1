"""Red team 6: XML-RPC calls wrapped in another document, past `egress.detect.xmlrpc`.

xmlrpc reads a direction's XML as a lenient server does (entities, CDATA, comments, UTF-16), and the JSON readers
read JSON; neither reads an XML-RPC document that is itself a *string* of the outer document:

- ``json``: ``{"xmlrpc": "\\u003c?xml ...\\u003cmethodCall\\u003e..."}``, Go's ``json.Marshal`` default (HTML-safe
  escaping of ``<``, ``>``, ``&``): no ``<`` in the bytes, so no tag is read, and the JSON readers see a string
  value that names no method;
- ``xmltext``: ``<rpc><payload>&lt;?xml ...&lt;methodCall&gt;...</payload></rpc>``, any XML writer's output for a
  string holding markup: xmlscan decodes the references into a text node, which it does not read as XML again.

The pool unwraps with ``json.loads`` / ``ElementTree`` and reads the call with ``xmlrpc.client.loads``
(redteam_xmlwrap_kit). Rows: both wrappings on allowed.lab's plain-HTTP port by name and on the pool's address
through the network rule that expects ``[tls, http]``. Ground truth: the pool's log (``share accepted``) and the
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
}
_KIT = "from tests.security.redteam_xmlwrap_kit import {0}; {0}()"


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "redteam.yaml")


@pytest.fixture(scope="module")
def pool(lab: SecurityLab) -> Attacker:
    running = lab.attacker(
        "xmlwrap-pool", [sys.executable, "-c", _KIT.format("pool_main"), f"{POOL}:3380", f"{ALLOWED}:8080"]
    )
    running.wait_for("listening")
    return running


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("how", ("json", "xmltext"))
def test_xmlrpc_wrapped_in_a_string(lab: SecurityLab, pool: Attacker, how: str, route: str) -> None:
    address, port, host = ROUTES[route]
    before = pool.log().count("share accepted")
    since = time.time()
    with lab.capture(f"xmlwrap-{how}-{route}") as capture:
        done = lab.sandbox_python(_KIT.format("miner_main"), address, str(port), host, how, timeout=60)
    crossed = capture.result
    assert crossed is not None
    shares = pool.log().count("share accepted") - before
    goal = shares > 0 and "share answered" in done.stdout
    dst = POOL if route == "network-rule" else ALLOWED
    reason = lab.reason_of(since, lambda r: r.dport == port and r.action == "block", timeout=10)
    leaked = crossed.bytes_to(dst, port, "tcp") if goal else 0
    report(f"redteam/xmlwrap-{how}-{route}", "mining", leaked, goal, reason or None)
    assert not goal, f"the pool accepted {shares} share(s): {done.stdout[-600:]}\npool: {pool.log()[-600:]}"
    assert reason == "mining", (reason, done.stdout[-600:], pool.log()[-600:])
