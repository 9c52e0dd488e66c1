"""Red team 6: Ethereum's and getwork's pool calls in Cap'n Proto, whose Text is reached by a list pointer.

`egress.detect.binrpc` reads a name as a string where the byte(s) before it give its length, and Stratum's
``mining.`` names also bare after a control byte. Cap'n Proto writes a ``Text`` as a NUL-ended byte list whose
*pointer* holds ``(length + 1) << 3 | 2``: ``eth_submitLogin`` follows ``82 00 00 00``. Stratum's names are found
by the bare rule (the NULs before them); Ethereum stratum's ``eth_submitLogin``/``eth_getWork``/``eth_submitWork``
and getwork's ``getblocktemplate``/``submitblock`` count only with a length prefix, so they pass
(redteam_capnp_kit says the schema).

Rows: ``ethereum`` and ``getwork`` on the two routes of test_redteam_binsplit (the pool's address through the
network rule that expects ``[tls, http]``, allowed.lab's plain-HTTP port by name). Ground truth: the pool's log
(``share accepted``) and the internet-side capture. Each row fails if the bypass works.
"""

from __future__ import annotations

import pytest

from tests.security.harness import Attacker, SecurityLab, report
from tests.security.redteam_http import ROUTES, attempt, judge, pool_fixtures

pytestmark = pytest.mark.security

KIT = "redteam_capnp_kit"
lab, pool = pool_fixtures("capnp-pool", KIT)


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("dialect", ("ethereum", "getwork"))
def test_pool_calls_in_capnp_text(lab: SecurityLab, pool: Attacker, dialect: str, route: str) -> None:
    name = f"capnp-{dialect}-{route}"
    run = attempt(lab, pool, name, route, dialect, kit=KIT, control=False, reason_wait=10)
    report(*run.row(f"redteam/{name}"))
    judge(run, pool)
