"""The plain-HTTP red-team runs' shared shape: the pool of tests/security/redteam_kit.py started on the internet
side, and one attempt of its miner from the sandbox (a route, a way of hiding Stratum in HTTP) judged by what
crossed, what the pool accepted and what egress recorded. Used by test_redteam_http_split and
test_redteam_http_target; what each asserts stays in its module."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time

from egress.lab.topology import server
from tests.security.capture import Crossed
from tests.security.harness import Attacker, SecurityLab

POOL = server("pool").v4
ALLOWED = server("allowed").v4
POOL_PORT, SITE_PORT = 3380, 8080
ROUTES = {
    "network-rule": (POOL, POOL_PORT, POOL),  # the pool's address, its rule expecting tls and http
    "host-rule": ("-", SITE_PORT, "allowed.lab"),  # allowed.lab's plain-HTTP port, by name
}
_KIT = "from tests.security.redteam_kit import {0}; {0}()"
CONTROL = "first answer b'HTTP/1.1 200 OK'"
"""The miner's line when its plain GET before the attempt was answered (the control: allowed HTTP passes)."""


def start_pool(lab: SecurityLab, name: str) -> Attacker:
    """The kit's pool on the internet side, listening on the pool's address and allowed.lab's HTTP port."""
    argv = [sys.executable, "-c", _KIT.format("pool_main"), f"{POOL}:{POOL_PORT}", f"{ALLOWED}:{SITE_PORT}"]
    running = lab.attacker(name, argv)
    running.wait_for("listening")
    return running


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

    @property
    def leaked(self) -> int:
        """Bytes the sandbox got to the pool's side (the attempt's destination and port)."""
        return self.crossed.bytes_to(self.dst, self.port, "tcp")


def attempt(lab: SecurityLab, pool: Attacker, name: str, route: str, how: str) -> Attempt:
    """Run the kit's miner from the sandbox along ``route`` (a key of `ROUTES`) hiding Stratum ``how``, under a
    capture named ``name``; assert the control (the plain GET before it was answered)."""
    address, port, host = ROUTES[route]
    before = pool.log().count("share accepted")
    since = time.time()
    with lab.capture(name) as capture:
        done = lab.sandbox_python(_KIT.format("miner_main"), address, str(port), host, how, timeout=60)
    crossed = capture.result
    assert crossed is not None
    assert CONTROL in done.stdout, done.stdout + done.stderr
    shares = pool.log().count("share accepted") - before
    reason = lab.reason_of(since, lambda r: r.dport == port and r.action == "block", timeout=5)
    return Attempt(done, crossed, shares, reason, POOL if route == "network-rule" else ALLOWED, port)
