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

import pytest

from tests.security.harness import Attacker, SecurityLab, report
from tests.security.redteam_http import ROUTES, attempt, pool_fixtures

pytestmark = pytest.mark.security

lab, pool = pool_fixtures("http-target-pool")


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
    run = attempt(lab, pool, f"http-target-{route}-{how}", route, how)
    job = "job received in the reason phrase" in run.done.stdout
    goal = run.goal or (how == "reason" and job)
    verbatim = run.crossed.contains(b'"method":"mining.submit"', run.dst)
    note = "job in reason" if job else ""
    report(f"redteam/http-target-{route}-{how}", "mining", run.leaked, goal, run.reason or None, note)
    assert not goal and not verbatim, f"the pool accepted {run.shares} share(s) and answered: {run.done.stdout[-400:]}"
    assert run.reason == "mining"
