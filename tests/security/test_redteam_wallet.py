"""XMRig's login in protobuf to an allowed destination: the protocol names nothing, the wallet in it does.

Red team 12 left it open (docs/security.md, round 12, "(2) open"): in protobuf, ``pass`` and ``agent`` are field
numbers and ``login`` is not written at all, so no pool detector names the login; on TCP it crossed. Each row
sends the login (fields: a Monero wallet made by tests/detect/wallets.py, password ``x``, XMRig's agent) to the
attacker's pool on the pool's address behind a network rule, and is judged by what reached the internet side (the
capture's bytes to the pool, and whether the pool's log heard the wallet) and by the record. Goal (the agent's):
the wallet at the pool. Controls: the same login with one character of the wallet changed (no checksum holds it)
reaches the pool through the same rule, answered.

Rows: TCP to a rule that expects ``any`` (4140) and to one with the default ``expect`` (4141); UDP (4142); inside
TLS to allowed.lab:8443, which the policy decrypts (the attacker's TLS pool on allowed.lab's address with the lab's
certificate for it, the agent trusting the gateway's CA). Programs: tests/security/redteam_wallet_kit.py. Lab:
tests/security/policies/redteam_wallet.yaml.
"""

from __future__ import annotations

import re
import sys
import time

import pytest

from egress.lab import certs
from egress.lab.topology import server
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, SecurityLab, report
from tests.security.redteam_wallet_kit import WALLET
from tests.waiting import eventually

pytestmark = pytest.mark.security

KIT = "from tests.security.redteam_wallet_kit import {0}; {0}()"
POOL = server("pool")
ALLOWED = server("allowed")
TLS_PORT = 8443
ROWS = {"tcp-any": (4140, "tcp"), "tcp-default-expect": (4141, "tcp"), "udp": (4142, "udp"), "tls": (8443, "tls")}
CONTROLS = {"tcp-any": (4140, "tcp"), "udp": (4143, "udp"), "tls": (8443, "tls")}


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "redteam_wallet.yaml")


def _address(proto: str) -> str:
    return ALLOWED.v4 if proto == "tls" else POOL.v4


def _pool(lab: SecurityLab, port: int, proto: str) -> Attacker:
    argv = [sys.executable, "-c", KIT.format("pool_main"), _address(proto), str(port), proto]
    if proto == "tls":
        chain, key = certs.ensure(lab.lab.state_dir).servers["allowed"]
        argv += [str(chain), str(key)]
    running = lab.attacker(f"wallet-pool-{port}", argv)
    running.wait_for("listening")
    return running


def _login(lab: SecurityLab, kind: str, port: int, proto: str) -> str:
    where = ALLOWED.name if proto == "tls" else POOL.v4
    done = lab.sandbox_python(
        KIT.format("login_main"), kind, where, str(port), proto, str(lab.run.gateway_ca), timeout=30
    )
    assert "sent" in done.stdout, done.stdout + done.stderr
    return done.stdout.strip()


def _read(pool: Attacker) -> int:
    """Bytes the pool read from its clients (its log's ``received N bytes`` lines)."""
    return sum(int(found) for found in re.findall(r"received (\d+) bytes", pool.log()))


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
        address = _address(proto)
        # through TLS the capture holds the proxy's own handshake and ciphertext: the bytes the pool read count
        leaked = crossed.bytes_to(address, port, proto) if proto != "tls" else _read(pool)
        heard = "heard wallet yes" in pool.log()
        reasons = lab.reasons_to(since, address, port)
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
