"""Red team: Stratum messages whole and verbatim in the request target of plain HTTP GETs
(``GET /{"id":4,"method":"mining.submit",...} HTTP/1.1``), answered whole in the response bodies.

The detectors read a request as its canonical HTTP stream, its body, the body's pieces, the query's form values
and the header values (`egress.proxy.mitm.inspect.read`); the JSON-RPC detectors read the HTTP messages of a
stream for their bodies, so JSON in the request line's path is read by none of them, though its bytes are a whole
Stratum message on the wire (the same message in the body, a query value or a header value is found). The pool
(tests/security/redteam_kit.py) reads the target as a lenient server would and answers each call whole: its
subscribe answer names no method (``[null, extranonce1, 4]``), and it hands its job (``mining.notify``) over in
the reason phrase of the answer to ``authorize`` (``HTTP/1.1 200 {"id":null,"method":"mining.notify",...}``),
which no detector reads either: a whole session, job and share, with no finding either way. Routes as
test_redteam_http_split: the pool's address through a network rule expecting ``[tls, http]`` and allowed.lab's
plain-HTTP port; the fast path, and mitmproxy (an empty chunked body: the fast path hands over); and the message
as the whole query (``GET /x?{"id":4,...}``: the query is read only for its ``name=value`` pairs).

Closed: `egress.proxy.mitm.inspect.start_pieces` gives the detectors a request's target and a response's reason
phrase, as they came and percent-decoded. The variants after the red team's three try to slip past that: the
message percent-encoded once or twice, after a path parameter, with an escaped key in a bare query, and the job
alone in the reason phrase of an answer to a plain GET.

Ground truth: the pool's log (``share accepted``) and the internet-side capture (the submit verbatim).
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
KIT = "from tests.security.redteam_kit import {0}; {0}()"
ROUTES = {
    "network-rule": (POOL, POOL_PORT, POOL),
    "host-rule": ("-", SITE_PORT, "allowed.lab"),
}


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "redteam.yaml")


@pytest.fixture(scope="module")
def pool(lab: SecurityLab) -> Attacker:
    argv = [sys.executable, "-c", KIT.format("pool_main"), f"{POOL}:{POOL_PORT}", f"{ALLOWED}:{SITE_PORT}"]
    running = lab.attacker("http-target-pool", argv)
    running.wait_for("listening")
    return running


HOWS = {
    "fast-path": "target",
    "mitmproxy": "target-chunked",
    "bare-query": "query",
    # Variants that try to slip past the fix (`egress.proxy.mitm.inspect.start_pieces`): the pool decodes them.
    "percent-encoded": "pct",
    "percent-encoded-mitmproxy": "pct-chunked",
    "double-percent-encoded": "pct2",
    "path-parameter": "segment",
    "query-escaped-key-mitmproxy": "escaped-chunked",
    "job-in-reason-only": "reason",
}


@pytest.mark.parametrize("how", list(HOWS.values()), ids=list(HOWS))
@pytest.mark.parametrize("route", sorted(ROUTES))
def test_stratum_in_the_request_target(lab: SecurityLab, pool: Attacker, route: str, how: str) -> None:
    address, port, host = ROUTES[route]
    dst = POOL if route == "network-rule" else ALLOWED
    before = pool.log().count("share accepted")
    since = time.time()
    with lab.capture(f"http-target-{route}-{how}") as capture:
        done = lab.sandbox_python(KIT.format("miner_main"), address, str(port), host, how, timeout=60)
    crossed = capture.result
    assert crossed is not None
    assert "first answer b'HTTP/1.1 200 OK'" in done.stdout, done.stdout + done.stderr  # control: plain GET passes
    shares = pool.log().count("share accepted") - before
    job = "job received in the reason phrase" in done.stdout
    goal = (shares > 0 and "share answered" in done.stdout) or (how == "reason" and job)
    verbatim = crossed.contains(b'"method":"mining.submit"', dst)
    reason = lab.reason_of(since, lambda r: r.dport == port and r.action == "block", timeout=5)
    leaked = crossed.bytes_to(dst, port, "tcp")
    report(f"redteam/http-target-{route}-{how}", "mining", leaked, goal, reason or None, "job in reason" if job else "")
    assert not goal and not verbatim, f"the pool accepted {shares} share(s) and answered: {done.stdout[-400:]}"
    assert reason == "mining"
