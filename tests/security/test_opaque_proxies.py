"""Fully encrypted proxy protocols from the sandbox to an allowed address on an allowed port: a Shadowsocks AEAD
and a VMess AEAD client's first request, framed as those protocols frame it (random bytes in the right lengths),
judged by what reaches the server and by the record; the benign controls (TLS with a bound name, SSH to a rule
that expects ssh, plain HTTP) still pass. The scanner names the same streams ``fully-encrypted`` in the capture
(egress.detect.encrypted.detect_stream); the gateway's gate records them ``unidentified-encrypted`` and blocks
them where the network rule expects a protocol (docs/security.md, "Opaque streams")."""

from __future__ import annotations

import time

import pytest

from tests.security.conftest import LabFactory
from tests.security.harness import SecurityLab, report
from tests.security.opaque_kit import ATTACK, POLICY, Kit, assert_benign_controls_pass, start_servers

pytestmark = pytest.mark.security

CLIENT = """
import random, socket, sys
host, port, variant = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rng = random.Random(11)
sealed = lambda size: rng.randbytes(size + 16)  # AEAD ciphertext: the plaintext's length plus a 16-byte tag
if variant == "shadowsocks-aead":
    # SIP004: salt, then chunks of [encrypted 2-byte length + tag][encrypted payload + tag]; the first payload is
    # the target address (type 3, a name, a port) and the client's first data (a TLS ClientHello: 517 bytes).
    request = rng.randbytes(32) + sealed(2) + sealed(1 + 1 + 15 + 2 + 517)
else:
    # VMess AEAD: 16-byte auth id, [encrypted header length + tag], 8-byte nonce, [encrypted header + tag], then
    # the first data chunk ([encrypted length + tag][encrypted data + tag]).
    request = rng.randbytes(16) + sealed(2) + rng.randbytes(8) + sealed(61) + sealed(2) + sealed(517)
try:
    sock = socket.create_connection((host, port), timeout=5)
    sock.sendall(request)
    sock.settimeout(3)
    print("answer", len(sock.recv(4096)))
except OSError as error:
    print("failed", error)
"""
VARIANTS = ["shadowsocks-aead", "vmess-aead"]
PORT = 8444
"""The sink behind the opaque policy's network rule (egress/tests/security/opaque_kit.py)."""


@pytest.fixture(scope="module")
def opaque(lab_factory: LabFactory) -> tuple[SecurityLab, Kit]:
    lab = lab_factory(POLICY)
    lab.sandbox(["dig", "+short", "@10.203.1.1", "ssh.lab"])  # binds ssh.lab -> 198.18.10.7 for this sandbox
    return lab, start_servers(lab)


@pytest.mark.parametrize("variant", VARIANTS)
def test_fully_encrypted_proxy_request(opaque: tuple[SecurityLab, Kit], variant: str) -> None:
    lab, _ = opaque
    sink = next(p for p in lab.processes if p.name == "sink")
    before = sink.log().count("connection got")
    since = time.time()
    with lab.capture(f"proxy-{variant}") as capture:
        done = lab.sandbox_python(CLIENT, ATTACK, str(PORT), variant)
    crossed = capture.result
    assert crossed is not None
    leaked = crossed.bytes_to(ATTACK, PORT, "tcp")
    received = [int(line.split()[2]) for line in sink.log().splitlines() if line.startswith("connection got")]
    goal = any(size > 0 for size in received[before:])
    mine = [r for r in lab.records(since) if r.dst == ATTACK and r.dport == PORT]
    if not mine and not goal:  # a blocked attempt's record may take an aggregation window to be written
        reason = lab.reason_of(since, lambda r: r.dst == ATTACK and r.dport == PORT)
        mine = [r for r in lab.records(since) if r.dst == ATTACK and r.dport == PORT] if reason else []
    seen = f"{mine[0].reason}/{mine[0].protocol}" if mine else None
    report(f"opaque/proxy-{variant}", "tunnel", leaked, goal, seen)
    assert leaked == 0 and not goal, (crossed.table(), received, done.stdout)
    assert seen == "tunnel/unidentified-encrypted", seen


def test_benign_controls_pass(opaque: tuple[SecurityLab, Kit]) -> None:
    """TLS with a bound SNI, SSH to a rule that expects ssh, plain HTTP: all through, nothing blocked."""
    lab, tools = opaque
    assert_benign_controls_pass(lab, tools, "opaque/proxy-control")
