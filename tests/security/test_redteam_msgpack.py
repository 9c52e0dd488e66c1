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

import pytest

from tests.security.harness import Attacker, SecurityLab, report
from tests.security.redteam_http import ROUTES, attempt, judge, pool_fixtures

pytestmark = pytest.mark.security

KIT = "redteam_msgpack_kit"
lab, pool = pool_fixtures("msgpack-pool", KIT)


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_stratum_as_msgpack_rpc(lab: SecurityLab, pool: Attacker, route: str) -> None:
    run = attempt(lab, pool, f"msgpack-{route}", route, kit=KIT, control=False, reason_wait=10)
    report(*run.row(f"redteam/msgpack-{route}"))
    judge(run, pool)
