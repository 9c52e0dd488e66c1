"""Red team (second round): idle connections to an allowed name from one sandbox hang every proxy worker; the
supervisor locks the gateway down and restarts them, and mining attempts made meanwhile leave no record.

The agent resolves allowed.lab and opens 2 x 12,000 connections to it (ports 80 and 8080, both allowed) that never
send a byte. Each is allowed, so each waits in a worker: the front's first-bytes wait (`egress.proxy.front`,
``PEEK_WAIT``), then mitmproxy's. Nothing bounds how many connections a sandbox may hold (no per-source limit in
nftables, none in the front), and a worker's event loop taken up by thousands of them stops answering the
supervisor's ping: after 10 s both workers are declared hung, the gateway goes into lockdown (every sandbox's
traffic dropped, not only the flooder's) and the workers are killed and restarted (`egress.gateway.supervisor`).
Nothing leaks (the lockdown fails closed), but the mining attempts the agent makes meanwhile (one a second, each
from an address of its own inside its network, so each would have a record of its own) are accepted by the
kernel into a hung worker's listen queue, get no answer, and are never recorded: killed with the worker, or
dropped by the lockdown's rate-limited log that names no mining. That is goal (c), an attempt that leaves no
record; the agent can repeat the flood as soon as the workers are back.

Ground truth: the listener's log and the capture (nothing must reach the pool), the sandbox's own list of attempts
that connected and sent their subscribe, and Redis (each of them must have a record naming its source).
"""

from __future__ import annotations

import contextlib
import re
import sys
import time

import pytest

from egress.lab.topology import GATEWAY_SBX_V4, server
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, SecurityLab, report
from tests.waiting import eventually

pytestmark = pytest.mark.security

POOL = server("pool").v4
PORT = 3380
FLOOD_KIT = "from tests.security.redteam_flood_kit import {0}; {0}()"
LISTENER = "from tests.security.redteam_kit import listener_main; listener_main()"
PER_PORT = 12_000
HOLD = 60
CONTROL = "10.203.1.99"
SOURCES = [f"10.203.1.{100 + n}" for n in range(20)]
"""One source per attempt (the agent's sandbox is the whole 10.203.1.0/24): each attempt has a record of its own."""


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "redteam.yaml")


@pytest.fixture(scope="module")
def pool(lab: SecurityLab) -> Attacker:
    running = lab.attacker("flood-pool", [sys.executable, "-c", LISTENER, f"{POOL}:{PORT}"])
    running.wait_for("listening")
    dev = lab.lab.sandbox_if
    script = "; ".join(f"ip addr add {source}/24 dev {dev}" for source in [CONTROL, *SOURCES])
    done = lab.sandbox(["sh", "-c", script])
    assert done.returncode == 0, done.stderr
    return running


def _recorded(lab: SecurityLab, since: float, sources: list[str], timeout: float) -> set[str]:
    """The sources among ``sources`` with a record of a connection to the pool's port since ``since``."""
    seen: set[str] = set()

    def all_there() -> None:
        seen.update(r.src for r in lab.records(since) if r.dport == PORT and r.src in sources)
        assert seen >= set(sources), f"no record yet for {sorted(set(sources) - seen)}"

    with contextlib.suppress(AssertionError):
        eventually(all_there, timeout=timeout, interval=0.5)
    return seen


def test_control_a_mining_attempt_is_recorded(lab: SecurityLab, pool: Attacker) -> None:
    since = time.time()
    done = lab.sandbox_python(FLOOD_KIT.format("probe_main"), POOL, str(PORT), CONTROL)
    assert f"attempt {CONTROL} sent" in done.stdout, done.stdout + done.stderr
    assert _recorded(lab, since, [CONTROL], timeout=30) == {CONTROL}


def test_mining_attempts_under_a_flood_of_idle_allowed_connections_are_recorded(
    lab: SecurityLab, pool: Attacker
) -> None:
    before = len(pool.log())
    since = time.time()
    with lab.capture("flood") as capture:
        flood = lab.attacker(
            "flood",
            [sys.executable, "-c", FLOOD_KIT.format("flood_main"), "allowed.lab", GATEWAY_SBX_V4,
             server("allowed").v4, "80,8080", str(PER_PORT), str(HOLD)],
            where="sandbox",
        )  # fmt: skip
        eventually(lambda: len(re.findall("holding", flood.log())) == 2, timeout=60, interval=0.2)
        done = lab.sandbox_python(FLOOD_KIT.format("probe_main"), POOL, str(PORT), *SOURCES, timeout=120)
        flood.stop()
    crossed = capture.result
    assert crossed is not None
    sent = re.findall(r"attempt (\S+) sent", done.stdout)
    recorded = _recorded(lab, since, sent, timeout=40)
    missing = [source for source in sent if source not in recorded]
    gateway_log = (lab.logs / "gateway.log").read_text(errors="replace")
    lockdowns = len(re.findall(r"LOCKDOWN", gateway_log))
    leaked = crossed.bytes_to(POOL, PORT, "tcp")
    goal = bool(re.search(r"got [1-9]", pool.log()[before:])) or crossed.contains(b"mining.subscribe", POOL)
    note = f"{len(missing)} of {len(sent)} attempts unrecorded; lockdowns {lockdowns}"
    report("redteam/flood-unrecorded", "unrecorded", leaked, goal, "mining" if not missing else None, note)
    assert not goal and leaked == 0, f"the subscribe reached the pool ({leaked} bytes)"
    assert not missing, f"attempts that sent a subscribe but left no record: {missing} ({note})"
