"""Red team 5: a pool's JSON-RPC calls as HTTP parameters (``GET /rpc?jsonrpc=2.0&method=mining.submit&params=
[...]&id=3``, or the same pairs form-encoded in a POST body) over plain HTTP.

That is JSON-RPC's own HTTP GET binding (JSON-RPC 1.1 WD §6.3; jsonrpc4j and other servers take ``method``,
``params`` and ``id`` as query parameters) and its form-encoded twin, not a private scheme: the method name
crosses verbatim, as a parameter's value. The detectors read a query's and a form's values one by one
(`egress.proxy.mitm.payload.form_values`, `egress.detect.httpread.start_pieces`): ``mining.submit`` alone is no
JSON-RPC message (no ``"method"`` key), the ``params`` value is a bare JSON array, and `egress.detect.binrpc`
reads names only behind a binary length prefix. The pool's answers are JSON, but Stratum's give nothing away when
the job comes as a result object rather than a ``mining.notify`` call and the subscribe answer carries no
``["mining.notify", ...]`` pairs.

Routes: allowed.lab's plain-HTTP port 8080 by name (a host rule; the front's fast path reads it) and the pool's
address through a network rule that expects ``[tls, http]``. Ground truth: the pool's log (``share accepted``)
and the internet-side capture. The Stratum rows fail while the bypass works (found 2026-11-30: a share accepted
on all four, no record). XMRig's and Ethereum's calls sent the same way are blocked today, but by the pool's
answers (a login result with a ``blob``, a getWork triple), not by the calls: they stay as rows that must hold.
"""

from __future__ import annotations

import pytest

from tests.security.harness import Attacker, SecurityLab, report
from tests.security.redteam_http import ROUTES, attempt, judge, pool_fixtures
from tests.security.redteam_rpcget_kit import EVASIONS

pytestmark = pytest.mark.security

KIT = "redteam_rpcget_kit"
lab, pool = pool_fixtures("rpcget-pool", KIT)


@pytest.mark.parametrize("dialect", ["stratum", "xmrig", "ethereum"])
@pytest.mark.parametrize("how", ["get", "form"])
@pytest.mark.parametrize("route", sorted(ROUTES))
def test_pool_calls_as_http_parameters(lab: SecurityLab, pool: Attacker, route: str, how: str, dialect: str) -> None:
    name = f"rpcget-{dialect}-{how}-{route}"
    run = attempt(lab, pool, name, route, how, dialect, kit=KIT, reason_wait=10)
    report(*run.row(f"redteam/{name}"))
    judge(run, pool)


@pytest.mark.parametrize("how", EVASIONS)
@pytest.mark.parametrize("route", sorted(ROUTES))
def test_spellings_past_the_binding_are_blocked(lab: SecurityLab, pool: Attacker, route: str, how: str) -> None:
    """The attacker's next tries (redteam_rpcget_kit.EVASIONS: encodings, multipart, chunked, pipelined, the name
    in a header and the path), each on both routes: the front's fast path and the network rule read them apart."""
    name = f"rpcget-stratum-{how}-{route}"
    run = attempt(lab, pool, name, route, how, "stratum", kit=KIT, reason_wait=10)
    report(*run.row(f"redteam/{name}"))
    judge(run, pool)
