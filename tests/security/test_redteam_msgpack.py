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

from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, SecurityLab, report
from tests.security.redteam_http import ROUTES, attempt, start_pool

pytestmark = pytest.mark.security


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "redteam.yaml")


@pytest.fixture(scope="module")
def pool(lab: SecurityLab) -> Attacker:
    return start_pool(lab, "msgpack-pool", "redteam_msgpack_kit")


@pytest.mark.parametrize("route", sorted(ROUTES))
def test_stratum_as_msgpack_rpc(lab: SecurityLab, pool: Attacker, route: str) -> None:
    run = attempt(lab, pool, f"msgpack-{route}", route, kit="redteam_msgpack_kit", control=False, reason_wait=10)
    goal = run.shares > 0 and run.answered
    report(f"redteam/msgpack-{route}", "mining", run.leaked if goal else 0, goal, run.reason or None)
    assert not goal, f"the pool accepted {run.shares} share(s): {run.done.stdout[-600:]}\npool: {pool.log()[-600:]}"
    assert run.reason == "mining", (run.reason, run.done.stdout[-600:], pool.log()[-600:])
