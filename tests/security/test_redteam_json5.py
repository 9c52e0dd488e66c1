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

from tests.security.harness import Attacker, SecurityLab, report
from tests.security.redteam_http import ROUTES, attempt, judge, pool_fixtures
from tests.security.redteam_json5_kit import SHAPES

pytestmark = pytest.mark.security

KIT = "redteam_json5_kit"
lab, pool = pool_fixtures("json5-pool", KIT)


@pytest.mark.parametrize("how", list(SHAPES))
@pytest.mark.parametrize("route", sorted(ROUTES))
def test_stratum_in_lenient_json(lab: SecurityLab, pool: Attacker, route: str, how: str) -> None:
    name = f"json5-{route}-{how}"
    run = attempt(lab, pool, name, route, how, kit=KIT, control=False, reason_wait=10)
    report(*run.row(f"redteam/{name}"))
    judge(run, pool)
