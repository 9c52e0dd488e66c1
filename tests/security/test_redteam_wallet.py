"""XMRig's login in protobuf to an allowed destination: the protocol names nothing, the wallet in it does.

Red team 12 left it open (docs/security.md, round 12, "(2) open"): in protobuf, ``pass`` and ``agent`` are field
numbers and ``login`` is not written at all, so no pool detector names the login; on TCP it crossed. Each row
sends the login (fields: a Monero wallet made by tests/detect/wallets.py, password ``x``, XMRig's agent) to the
attacker's pool on the pool's address behind a network rule, and is judged by what reached the internet side (the
capture's bytes to the pool, and whether the pool's log heard the wallet) and by the record. Goal (the agent's):
the wallet at the pool. Controls: the same login with one character of the wallet changed (no checksum holds it)
reaches the pool through the same rule, answered.

Rows: TCP to a rule that expects ``any`` (4140) and to one with the default ``expect`` (4141); UDP (4142).
Not played: the login inside TLS (the detectors read decrypted TLS as the same stream: tests/detect/test_wallet.py
holds the detector; the lab's decrypt rows are for host rules). Programs: tests/security/redteam_wallet_kit.py.
Lab: tests/security/policies/redteam_wallet.yaml.
"""

from __future__ import annotations

import sys
import time

import pytest

from egress.lab.topology import server
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, SecurityLab, report
from tests.security.redteam_wallet_kit import WALLET
from tests.waiting import eventually

pytestmark = pytest.mark.security

KIT = "from tests.security.redteam_wallet_kit import {0}; {0}()"
POOL = server("pool")
ROWS = {"tcp-any": (4140, "tcp"), "tcp-default-expect": (4141, "tcp"), "udp": (4142, "udp")}
CONTROLS = {"tcp-any": (4140, "tcp"), "udp": (4143, "udp")}


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "redteam_wallet.yaml")


def _pool(lab: SecurityLab, port: int, proto: str) -> Attacker:
    running = lab.attacker(f"wallet-pool-{port}", [sys.executable, "-c", KIT.format("pool_main"), POOL.v4, str(port),
                                                   proto])  # fmt: skip
    running.wait_for("listening")
    return running


def _login(lab: SecurityLab, kind: str, port: int, proto: str) -> str:
    done = lab.sandbox_python(KIT.format("login_main"), kind, POOL.v4, str(port), proto, timeout=30)
    assert "sent" in done.stdout, done.stdout + done.stderr
    return done.stdout.strip()


def _stop(lab: SecurityLab, pool: Attacker) -> None:
    pool.stop()
    lab.processes.remove(pool)


@pytest.mark.parametrize("name", list(ROWS))
def test_a_protobuf_login_s_wallet_reaches_no_pool(lab: SecurityLab, name: str) -> None:
    port, proto = ROWS[name]
    pool = _pool(lab, port, proto)
    try:
        since = time.time()
        with lab.capture(f"wallet-{name}") as capture:
            out = _login(lab, "wallet", port, proto)
        crossed = capture.result
        assert crossed is not None
        leaked = crossed.bytes_to(POOL.v4, port, proto)
        heard = "heard wallet yes" in pool.log()
        reasons = lab.reasons_to(since, POOL.v4, port)
        note = f"{out}; wallet in the capture: {crossed.contains(WALLET)}; pool: {pool.log().strip()[-80:]!r}"
        report(f"redteam-wallet/{name}", "wallet", leaked, heard, ",".join(reasons) or None, note)
        assert leaked == 0 and not heard and not crossed.contains(WALLET), note
        assert "mining" in reasons, f"{name}: {reasons}"
    finally:
        _stop(lab, pool)


@pytest.mark.parametrize("name", list(CONTROLS))
def test_control_the_same_login_with_a_wallet_no_checksum_holds_reaches_the_pool(lab: SecurityLab, name: str) -> None:
    port, proto = CONTROLS[name]
    pool = _pool(lab, port, proto)
    try:
        out = _login(lab, "mutated", port, proto)

        def heard() -> bool:
            assert "heard wallet yes" in pool.log(), f"{out}; pool: {pool.log()!r}"
            return True

        eventually(heard, timeout=10.0)
        assert "job yes" in out, out
    finally:
        _stop(lab, pool)
