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

import sys
import time

import pytest

from egress.lab.topology import server
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, SecurityLab, report

pytestmark = pytest.mark.security

POOL = server("pool").v4
ALLOWED = server("allowed").v4
POOL_PORT, SITE_PORT = 3380, 8080
KIT = "from tests.security.redteam_kit import {}; {}()"


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "redteam.yaml")


@pytest.fixture(scope="module")
def pool(lab: SecurityLab) -> Attacker:
    argv = [sys.executable, "-c", KIT.format("pool_main", "pool_main"), f"{POOL}:{POOL_PORT}", f"{ALLOWED}:{SITE_PORT}"]
    running = lab.attacker("http-split-pool", argv)
    running.wait_for("listening")
    return running


ROUTES = {
    "network-rule": (POOL, POOL_PORT, POOL),  # the pool's address, its rule expecting tls and http
    "host-rule": ("-", SITE_PORT, "allowed.lab"),  # allowed.lab's plain-HTTP port, by name
}


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
    address, port, host = ROUTES[route]
    dst = POOL if route == "network-rule" else ALLOWED
    before = pool.log().count("share accepted")
    since = time.time()
    with lab.capture(f"http-split-{route}-{how}") as capture:
        done = lab.sandbox_python(KIT.format("miner_main", "miner_main"), address, str(port), host, how, timeout=60)
    crossed = capture.result
    assert crossed is not None
    shares = pool.log().count("share accepted") - before
    answered = "share answered" in done.stdout
    assert "first answer b'HTTP/1.1 200 OK'" in done.stdout, done.stdout + done.stderr  # control: plain GET passes
    leaked = crossed.bytes_to(dst, port, "tcp")
    goal = shares > 0 and answered
    reason = lab.reason_of(since, lambda r: r.dport == port and r.action == "block", timeout=5)
    report(f"redteam/http-split-{route}-{how}", "mining", leaked if goal else 0, goal, reason or None)
    assert not goal, f"the pool accepted {shares} share(s) and answered: {done.stdout[-400:]}"
    assert reason == "mining"
