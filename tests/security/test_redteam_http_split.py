"""Red team: Stratum cut across the bodies of keep-alive HTTP requests (and the pool's answers across the
responses) reaches a pool that concatenates them, through plain HTTP that the policy allows.

Each request and response of a connection is judged alone (`egress.proxy.httpjudge` in the front's fast path,
`egress.proxy.mitm.inspect.inspect_exchange` in mitmproxy): no body holds a whole Stratum message, so no detector
sees one, while a pool that reads the bodies of a connection as one stream (tests/security/redteam_kit.py) gets
subscribe, authorize and a share, and answers each. WebSocket messages are already read as a rolling stream per
direction (`inspect.WebSocketInspection`: "JSON split over messages is seen whole"); HTTP bodies of one
connection are not. Routes: the pool's own address through a network rule that expects ``[tls, http]`` (the
lab's "compute" rule shape), and an allowed name's plain-HTTP port; the fast path (Content-Length bodies) and
mitmproxy (chunked bodies: the fast path hands the connection over at the first one).

Closed: `egress.proxy.mitm.inspect.BodyStreams` joins a connection's request bodies, and its response bodies, per
direction (the fast path's `Judge.joined`, the addon's `FlowHooks`).

Ground truth: the pool's log (``share accepted``) and the internet-side capture (bytes to the pool).
"""

from __future__ import annotations

import pytest

from tests.security.harness import Attacker, SecurityLab, report
from tests.security.redteam_http import ROUTES, attempt, judge, pool_fixtures

pytestmark = pytest.mark.security

lab, pool = pool_fixtures("http-split-pool")


HOWS = {
    "fast-path": "fast",
    "mitmproxy": "chunked",
    # Variants that try past the fix (`egress.proxy.mitm.inspect.BodyStreams`): keys escaped, 20 KiB of JSON
    # whitespace inside the first message (past the joined window), each piece gzip-coded (mitmproxy decodes).
    "escaped-keys": "escaped",
    "padded-past-the-window": "padded",
    "gzip-pieces": "gzip",
}


@pytest.mark.parametrize("how", list(HOWS.values()), ids=list(HOWS))
@pytest.mark.parametrize("route", sorted(ROUTES))
def test_stratum_cut_across_keep_alive_request_bodies(lab: SecurityLab, pool: Attacker, route: str, how: str) -> None:
    name = f"http-split-{route}-{how}"
    run = attempt(lab, pool, name, route, how)
    report(*run.row(f"redteam/{name}"))
    judge(run, pool)
