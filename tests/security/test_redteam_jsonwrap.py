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

import pytest

from tests.security.harness import Attacker, SecurityLab, report
from tests.security.redteam_http import ROUTES, attempt, judge, pool_fixtures

pytestmark = pytest.mark.security

KIT = "redteam_jsonwrap_kit"
lab, pool = pool_fixtures("jsonwrap-pool", KIT)


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("how", ("jsonstr", "xmltext", "xmlattr"))
def test_stratum_wrapped_in_a_string(lab: SecurityLab, pool: Attacker, how: str, route: str) -> None:
    name = f"jsonwrap-{how}-{route}"
    run = attempt(lab, pool, name, route, how, kit=KIT, control=False, reason_wait=10)
    report(*run.row(f"redteam/{name}"))
    judge(run, pool)
