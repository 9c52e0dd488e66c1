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

import sys
import time

import pytest

from egress.lab.topology import server
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, SecurityLab, report
from tests.security.redteam_json5_kit import SHAPES

pytestmark = pytest.mark.security

POOL = server("pool").v4
ALLOWED = server("allowed").v4
ROUTES = {
    "network-rule": (POOL, 3380, POOL),
    "host-rule": ("-", 8080, "allowed.lab"),
}
_KIT = "from tests.security.redteam_json5_kit import {0}; {0}()"


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "redteam.yaml")


@pytest.fixture(scope="module")
def pool(lab: SecurityLab) -> Attacker:
    running = lab.attacker(
        "json5-pool", [sys.executable, "-c", _KIT.format("pool_main"), f"{POOL}:3380", f"{ALLOWED}:8080"]
    )
    running.wait_for("listening")
    return running


@pytest.mark.parametrize("how", list(SHAPES))
@pytest.mark.parametrize("route", sorted(ROUTES))
def test_stratum_in_lenient_json(lab: SecurityLab, pool: Attacker, route: str, how: str) -> None:
    address, port, host = ROUTES[route]
    before = pool.log().count("share accepted")
    since = time.time()
    with lab.capture(f"json5-{route}-{how}") as capture:
        done = lab.sandbox_python(_KIT.format("miner_main"), address, str(port), host, how, timeout=60)
    crossed = capture.result
    assert crossed is not None
    shares = pool.log().count("share accepted") - before
    goal = shares > 0 and "share answered" in done.stdout
    dst = POOL if route == "network-rule" else ALLOWED
    reason = lab.reason_of(since, lambda r: r.dport == port and r.action == "block", timeout=10)
    report(
        f"redteam/json5-{route}-{how}",
        "mining",
        crossed.bytes_to(dst, port, "tcp") if goal else 0,
        goal,
        reason or None,
    )
    assert not goal, f"the pool accepted {shares} share(s): {done.stdout[-600:]}\npool: {pool.log()[-600:]}"
    assert reason == "mining", (reason, done.stdout[-600:], pool.log()[-600:])
