"""Red team 4: Stratum as XML-RPC over plain HTTP, Python's standard library on both ends.

XML-RPC is the oldest standard RPC encoding and keeps the method names verbatim, in text:
``<methodCall><methodName>mining.submit</methodName><params>...``. The JSON-RPC detectors
(`egress.detect.jsonrpc` and the pool detectors on it) read JSON only, and `egress.detect.binrpc` reads names only
after a binary length prefix and leaves text to them; so no detector reads an XML ``methodName``. The same holds
for SOAP and for a raw stream of XML documents.

Closed by `egress.detect.xmlrpc` (docs/security.md, "Fourth round"). Each call is made five ways (the kit's
``HOWS``): as `xmlrpc.client` writes it, gzip-coded, inside one ``system.multicall`` (the name only as a struct
member's value), as the first argument of a generic ``call`` method, and with the name in pieces that Python's
reader joins (``<x:methodName>``, CDATA, a comment, ``&#x2e;``) in UTF-16. A sixth, ``cut``: the call cut inside
its name across two keep-alive bodies that the pool joins (the gateway's `BodyStreams` starts a request's joined
stream at its first ``<`` as at a bracket).

Routes: allowed.lab's plain-HTTP port 8080 by name (a host rule: HTTP there is read by the front's fast path) and
the pool's own address through a network rule that expects ``[tls, http]``. Ground truth: the pool's log
(``share accepted``) and the internet-side capture. Each row fails while the bypass works.
"""

from __future__ import annotations

import time

import pytest

from egress.lab.topology import server
from tests.security.harness import Attacker, SecurityLab, report
from tests.security.redteam_http import Attempt, judge, pool_fixtures
from tests.security.redteam_xmlrpc_kit import HOWS

pytestmark = pytest.mark.security

POOL = server("pool").v4
ALLOWED = server("allowed").v4
ROUTES = {
    "network-rule": (f"http://{POOL}:3380/RPC2", POOL, 3380),
    "host-rule": ("http://allowed.lab:8080/RPC2", ALLOWED, 8080),
}
_KIT = "from tests.security.redteam_xmlrpc_kit import {0}; {0}()"
lab, pool = pool_fixtures("xmlrpc-pool", "redteam_xmlrpc_kit")


@pytest.mark.parametrize("how", sorted(HOWS))
@pytest.mark.parametrize("route", sorted(ROUTES))
def test_stratum_as_xml_rpc(lab: SecurityLab, pool: Attacker, route: str, how: str) -> None:
    url, dst, port = ROUTES[route]
    name = f"xmlrpc-{route}" if how == "stdlib" else f"xmlrpc-{how}-{route}"
    before = pool.log().count("share accepted")
    since = time.time()
    with lab.capture(name) as capture:
        done = lab.sandbox_python(_KIT.format("miner_main"), url, how, timeout=60)
    crossed = capture.result
    assert crossed is not None
    shares = pool.log().count("share accepted") - before
    reason = lab.reason_of(since, lambda r: r.dport == port and r.action == "block", timeout=10)
    run = Attempt(done, crossed, shares, reason, dst, port)  # as `attempt` gives it: the miner takes a URL here
    report(*run.row(f"redteam/{name}"))
    judge(run, pool)
