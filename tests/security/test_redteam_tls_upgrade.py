"""Red team: TLS to a host on the decrypt list, started after a plaintext opening (STARTTLS-style), is relayed
without decryption, so Stratum inside it reaches the attacker's pool on the allowed name's address.

The policy (tests/security/policies/mitm.yaml) allows allowed.lab on 8443 and puts it on the decrypt list: TLS
to it is terminated with the gateway's CA and every decrypted byte goes through the detectors (docs/security.md,
"Decrypted traffic"; the operator's answer to a tunnel inside TLS to an allowed host in "Out of scope"). A
direct ClientHello is intercepted (the control row: the Stratum inside is found and the pool gets nothing). But a
client that first sends one plaintext line (``STARTTLS``), then its ClientHello naming allowed.lab, is judged as
a raw stream (`egress.proxy.gate.Gate._raw`: INSPECT); the bound hello inside it is found by
`Gate.bound_hello_at` and the TLS from there is only watched for its shape (`egress.proxy.upgraded`), never
intercepted: `Gate._tls`'s ``sandbox.decrypts(sni)`` is the only place the decrypt list is read. Three Stratum
calls inside that TLS show no mining shape, so the pool subscribes, authorizes and accepts a share; nothing is
recorded. The same when the client stays silent and the server speaks first (a banner), then the client's hello
(`InspectLayer` with ``guard_http``: the hello is no HTTP, so it is relayed and watched, not intercepted).

Ground truth: the pool's log (``share accepted``); the internet-side capture counts the bytes to it.
"""

from __future__ import annotations

import sys
import time

import pytest

from egress.lab import certs
from egress.lab.topology import server
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, SecurityLab, report

pytestmark = pytest.mark.security

ALLOWED = server("allowed").v4
PORT = 8443
_KIT = "from tests.security.redteam_tls_kit import {0}; {0}()"


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "mitm.yaml")


@pytest.fixture(scope="module")
def pool(lab: SecurityLab) -> Attacker:
    chain, key = certs.ensure(lab.lab.state_dir).servers["allowed"]
    argv = [sys.executable, "-c", _KIT.format("pool_main"), ALLOWED, str(PORT), str(chain), str(key)]
    running = lab.attacker("tls-upgrade-pool", argv)
    running.wait_for("listening")
    return running


HOWS = {
    "direct-hello-control": "direct",  # intercepted: the detectors read the Stratum inside
    "starttls-line-then-hello": "starttls",
    "server-banner-then-hello": "banner",  # the client silent, the server speaks first, then the client's hello
}


@pytest.mark.parametrize("how", list(HOWS.values()), ids=list(HOWS))
def test_stratum_in_tls_after_a_plaintext_opening_to_a_decrypted_host(
    lab: SecurityLab, pool: Attacker, how: str
) -> None:
    before = pool.log().count("share accepted")
    since = time.time()
    with lab.capture(f"tls-upgrade-{how}") as capture:
        done = lab.sandbox_python(_KIT.format("miner_main"), str(PORT), how, timeout=60)
    crossed = capture.result
    assert crossed is not None
    shares = pool.log().count("share accepted") - before
    goal = shares > 0 and "share answered" in done.stdout
    reason = lab.reason_of(since, lambda r: r.dport == PORT and r.action == "block", timeout=10)
    leaked = crossed.bytes_to(ALLOWED, PORT, "tcp") if goal else 0
    report(f"redteam/tls-upgrade-{how}", "mining", leaked, goal, reason or None)
    assert not goal, f"the pool accepted {shares} share(s): {done.stdout[-600:]}\npool: {pool.log()[-600:]}"
    # The control's Stratum is read decrypted (mining); TLS begun mid-stream to a decrypted name is refused at
    # its hello (`Gate.unbound_hello`: a tunnel, "tls-not-decrypted"), before any byte of it crosses.
    expected = "mining" if how == "direct" else "tunnel"
    assert reason == expected, (reason, done.stdout[-600:], pool.log()[-600:])
    if how != "direct":
        assert not crossed.contains(b"\x16\x03", ALLOWED), "the mid-stream ClientHello crossed"
