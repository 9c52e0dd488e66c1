"""The red-team pool runs' shared shape: a module's lab and a kit's pool (tests/security/redteam_kit.py,
redteam_msgpack_kit.py...) started on the internet side, on the pool's address and allowed.lab's HTTP port
(`pool_fixtures`), one attempt of its miner from the sandbox (a route, a way of hiding Stratum: `attempt`), and
the judge of it (`judge`, after the module's ``report(*run.row(...))``): what crossed, what the pool accepted and
what egress recorded. Used by the test_redteam_* modules of pools (HTTP split and target, msgpack, lenient JSON,
binary splits, BER, Cap'n Proto, wrapped strings, coded forms, HTTP parameters, h2c); what a module asserts past
the judge stays in it.

A kit's ``miner_main`` reads ``ADDRESS|- PORT HOST HOW...`` (`tests.security.redteam_wire.miner_argv`)."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from egress.lab.topology import server
from tests.security.capture import Crossed
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, SecurityLab

POOL = server("pool").v4
ALLOWED = server("allowed").v4
POOL_PORT, SITE_PORT = 3380, 8080
ROUTES = {
    "network-rule": (POOL, POOL_PORT, POOL),  # the pool's address, its rule expecting tls and http
    "host-rule": ("-", SITE_PORT, "allowed.lab"),  # allowed.lab's plain-HTTP port, by name
}
_KIT = "from tests.security.{0} import {1}; {1}()"
CONTROL = "first answer b'HTTP/1.1 200 OK'"
"""The miner's line when its plain GET before the attempt was answered (the control: allowed HTTP passes)."""


def start_pool(lab: SecurityLab, name: str, kit: str = "redteam_kit") -> Attacker:
    """``kit``'s pool (a module of tests/security with ``pool_main``) on the internet side, listening on the pool's
    address and allowed.lab's HTTP port."""
    argv = [sys.executable, "-c", _KIT.format(kit, "pool_main"), f"{POOL}:{POOL_PORT}", f"{ALLOWED}:{SITE_PORT}"]
    running = lab.attacker(name, argv)
    running.wait_for("listening")
    return running


def pool_fixtures(
    name: str, kit: str = "redteam_kit"
) -> tuple[Callable[[LabFactory], SecurityLab], Callable[[SecurityLab], Attacker]]:
    """A module's ``lab`` (policies/redteam.yaml) and ``pool`` (``kit``'s, `start_pool` under ``name``) fixtures,
    module-scoped: ``lab, pool = pool_fixtures("ber-pool", "redteam_ber_kit")`` at the top of the module."""

    @pytest.fixture(scope="module", name="lab")
    def lab_fixture(lab_factory: LabFactory) -> SecurityLab:
        return lab_factory(POLICIES / "redteam.yaml")

    @pytest.fixture(scope="module", name="pool")
    def pool_fixture(lab: SecurityLab) -> Attacker:
        return start_pool(lab, name, kit)

    return lab_fixture, pool_fixture


@dataclasses.dataclass(frozen=True)
class Attempt:
    """One run of the kit's miner: its output, what crossed to the internet side, and the pool's and egress's
    account of it."""

    done: subprocess.CompletedProcess[str]
    crossed: Crossed
    shares: int
    """Shares the pool accepted during the attempt."""
    reason: str
    """The reason of egress's first block record on the attempt's port since it began ("" when none came)."""
    dst: str
    port: int

    @property
    def answered(self) -> bool:
        return "share answered" in self.done.stdout

    def row(self, technique: str) -> tuple[str, str, int, bool, str | None]:
        """``report``'s arguments for this attempt as ``technique`` (a ``mining`` row; bytes to the pool's side
        counted when the bypass worked)."""
        return technique, "mining", self.leaked if self.goal else 0, self.goal, self.reason or None

    @property
    def goal(self) -> bool:
        """The bypass worked: the pool accepted a share and the miner got its answer."""
        return self.shares > 0 and self.answered

    @property
    def leaked(self) -> int:
        """Bytes the sandbox got to the pool's side (the attempt's destination and port)."""
        return self.crossed.bytes_to(self.dst, self.port, "tcp")


def attempt(
    lab: SecurityLab,
    pool: Attacker,
    name: str,
    route: str,
    *how: str,
    kit: str = "redteam_kit",
    control: bool = True,
    reason_wait: float = 5.0,
) -> Attempt:
    """Run ``kit``'s miner from the sandbox along ``route`` (a key of `ROUTES`; ``how``: the miner's further
    arguments) under a capture named ``name``; with ``control``, assert the control (the plain GET before it was
    answered). ``reason_wait``: how long the block's record is waited for."""
    address, port, host = ROUTES[route]
    before = pool.log().count("share accepted")
    since = time.time()
    with lab.capture(name) as capture:
        done = lab.sandbox_python(_KIT.format(kit, "miner_main"), address, str(port), host, *how, timeout=60)
    crossed = capture.result
    assert crossed is not None
    if control:
        assert CONTROL in done.stdout, done.stdout + done.stderr
    shares = pool.log().count("share accepted") - before
    reason = lab.reason_of(since, lambda r: r.dport == port and r.action == "block", timeout=reason_wait)
    return Attempt(done, crossed, shares, reason, POOL if route == "network-rule" else ALLOWED, port)


def judge(run: Attempt, pool: Attacker, reasons: tuple[str, ...] = ("mining",)) -> None:
    """Assert that ``run``'s bypass failed: no share accepted and answered, and egress recorded the block with one
    of ``reasons``. The module reports its row first (harness ``report``, with `Attempt.row`): importing ``report``
    is also what marks it a technique module for tests/test_pcaps.py."""
    assert not run.goal, f"the pool accepted {run.shares} share(s): {run.done.stdout[-600:]}\npool: {pool.log()[-600:]}"
    assert run.reason in reasons, (run.reason, run.done.stdout[-600:], pool.log()[-600:])
