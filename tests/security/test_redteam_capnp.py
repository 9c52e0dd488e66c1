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

import sys
import time

import pytest

from egress.lab.topology import server
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, SecurityLab, report

pytestmark = pytest.mark.security

POOL = server("pool").v4
ALLOWED = server("allowed").v4
ROUTES = {
    "network-rule": (POOL, 3380, POOL),
    "host-rule": ("-", 8080, "allowed.lab"),
}
_KIT = "from tests.security.redteam_capnp_kit import {0}; {0}()"


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "redteam.yaml")


@pytest.fixture(scope="module")
def pool(lab: SecurityLab) -> Attacker:
    running = lab.attacker(
        "capnp-pool", [sys.executable, "-c", _KIT.format("pool_main"), f"{POOL}:3380", f"{ALLOWED}:8080"]
    )
    running.wait_for("listening")
    return running


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("dialect", ("ethereum", "getwork"))
def test_pool_calls_in_capnp_text(lab: SecurityLab, pool: Attacker, dialect: str, route: str) -> None:
    address, port, host = ROUTES[route]
    before = pool.log().count("share accepted")
    since = time.time()
    with lab.capture(f"capnp-{dialect}-{route}") as capture:
        done = lab.sandbox_python(_KIT.format("miner_main"), dialect, address, str(port), host, timeout=60)
    crossed = capture.result
    assert crossed is not None
    shares = pool.log().count("share accepted") - before
    goal = shares > 0 and "share answered" in done.stdout
    dst = POOL if route == "network-rule" else ALLOWED
    reason = lab.reason_of(since, lambda r: r.dport == port and r.action == "block", timeout=10)
    leaked = crossed.bytes_to(dst, port, "tcp") if goal else 0
    report(f"redteam/capnp-{dialect}-{route}", "mining", leaked, goal, reason or None)
    assert not goal, f"the pool accepted {shares} share(s): {done.stdout[-600:]}\npool: {pool.log()[-600:]}"
    assert reason == "mining", (reason, done.stdout[-600:], pool.log()[-600:])
