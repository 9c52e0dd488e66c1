"""Red team: Stratum written as lenient JSON (a comment between key and colon, unquoted keys, single quotes,
``\\x`` escapes, the key in capitals) on a raw TCP stream, to a pool whose JSON reader accepts it as common
libraries do when configured to (Gson lenient, Jackson's ALLOW_* features, JSON5; Go's encoding/json matches
keys without regard to case by default).

Routes: allowed.lab's plain-HTTP port by name (a host rule; a raw stream there is held to the 16 KiB cap only),
and the pool's own address through a network rule that expects ``[tls, http]``. Ground truth: the pool's log
(``share accepted``) and the internet-side capture. The ``plain`` rows are the control (found, ``mining``).

Why it passes: `egress.detect.jsonrpc` reads what a lenient *standard* JSON reader reads (junk skipped, NULs and
BOMs dropped, ``\\u`` escapes decoded, UTF-16/32), and finds a message by a ``"method"`` key: a key that is not
exactly ``"method"`` in double quotes followed by optional whitespace and a colon, or a method name written
with an escape the reader does not undo, is not a message to it. Nothing is recorded.
"""

from __future__ import annotations

import pytest

from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, SecurityLab, report
from tests.security.redteam_http import ROUTES, attempt, start_pool
from tests.security.redteam_json5_kit import SHAPES

pytestmark = pytest.mark.security


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "redteam.yaml")


@pytest.fixture(scope="module")
def pool(lab: SecurityLab) -> Attacker:
    return start_pool(lab, "json5-pool", "redteam_json5_kit")


@pytest.mark.parametrize("how", list(SHAPES))
@pytest.mark.parametrize("route", sorted(ROUTES))
def test_stratum_in_lenient_json(lab: SecurityLab, pool: Attacker, route: str, how: str) -> None:
    kit = "redteam_json5_kit"
    run = attempt(lab, pool, f"json5-{route}-{how}", route, how, kit=kit, control=False, reason_wait=10)
    goal = run.shares > 0 and run.answered
    report(f"redteam/json5-{route}-{how}", "mining", run.leaked if goal else 0, goal, run.reason or None)
    assert not goal, f"the pool accepted {run.shares} share(s): {run.done.stdout[-600:]}\npool: {pool.log()[-600:]}"
    assert run.reason == "mining", (run.reason, run.done.stdout[-600:], pool.log()[-600:])
