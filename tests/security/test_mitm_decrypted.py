"""Decrypted traffic in the lab (issue 9 items 5 and 6): the attacker runs a site on allowed.lab's own address
(tests/proxy/mitm/site.py: plain HTTP on 8080, TLS on 8443 with the lab's allowed.lab certificate), the policy
allows allowed.lab on those ports and decrypts it (tests/security/policies/mitm.yaml), and the agent plays each
technique from the sandbox (tests/security/mitm_client.py).

Ground truth is the site's own log: the mining JSON (or the random WebSocket message, or any byte after a
``101``) never arrives. The internet-side capture must not hold the secret in clear either (on 8443 it is TLS to
the site, so the site's log is what counts there). Allowed traffic to allowed.lab crosses, as it should: leaked
bytes are the secret's bytes that reached the site.
"""

from __future__ import annotations

import sys
import time

import pytest

from egress.lab import certs
from egress.lab.topology import server
from tests.proxy.mitm.site import parse_log
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, SecurityLab, report
from tests.security.mitm_client import SECRET

pytestmark = pytest.mark.security

ALLOWED = server("allowed").v4
PLAIN, TLS = 8080, 8443
MARKER = b"mining.submit"


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "mitm.yaml")


@pytest.fixture(scope="module")
def site(lab: SecurityLab) -> Attacker:
    chain, key = certs.ensure(lab.lab.state_dir).servers["allowed"]
    argv = [sys.executable, "-m", "tests.proxy.mitm.site", ALLOWED, str(PLAIN), str(TLS), str(chain), str(key)]
    running = lab.attacker("mitm-site", argv)
    running.wait_for("listening")
    return running


def _evil(kind: str, data: bytes) -> bool:
    """A piece of the site's log that the technique wanted to get there (anything but the positive controls)."""
    if kind == "wire":
        return False  # the bytes as they came; the decoded pieces are judged
    return MARKER in data or (kind == "raw" and bool(data)) or (kind == "ws" and b'"chat"' not in data)


def _play(lab: SecurityLab, site: Attacker, technique: str, tls: bool) -> tuple[int, bool, str, list[bytes]]:
    """Play ``technique``; (secret bytes that reached the site, goal achieved, record reason, the client's answers)."""
    before = len(parse_log(site.log()))
    since = time.time()
    port = TLS if tls else PLAIN
    with lab.capture(technique) as capture:
        done = lab.sandbox_python(
            "from tests.security.mitm_client import main; main()",
            technique,
            str(port),
            "1" if tls else "0",
            str(lab.run.gateway_ca),
        )
    answers = [bytes.fromhex(line[7:].strip()) for line in done.stdout.splitlines() if line.startswith("answer ")]
    received = parse_log(site.log())[before:]
    secret_seen = [data for kind, data in received if _evil(kind, data)]
    leaked = sum(len(data) for data in secret_seen)
    crossed = capture.result
    assert crossed is not None
    if not tls:
        leaked = max(leaked, len(SECRET) if crossed.contains(MARKER, ALLOWED) else 0)
    goal = bool(secret_seen)
    reason = lab.reason_of(since, lambda r: r.dport == port and r.action == "block")
    return leaked, goal, reason, answers


@pytest.mark.parametrize("tls", [True], ids=["decrypted"])
def test_mitm_non_http_inside_intercepted_tls(lab: SecurityLab, site: Attacker, tls: bool) -> None:
    leaked, goal, reason, _ = _play(lab, site, "raw-stratum", tls)
    report("mitm/raw-stratum-in-tls", "mining", leaked, goal, reason)
    assert leaked == 0 and not goal
    assert reason == "mining"


@pytest.mark.parametrize("tls", [True, False], ids=["decrypted", "plain"])
@pytest.mark.parametrize("variant", ["bogus-coding", "chunked", "gzip"])
def test_mitm_second_post(lab: SecurityLab, site: Attacker, variant: str, tls: bool) -> None:
    leaked, goal, reason, answers = _play(lab, site, f"second-post-{variant}", tls)
    report(f"mitm/second-post-{variant}-{'tls' if tls else 'plain'}", "mining", leaked, goal, reason)
    assert answers and answers[0].startswith(b"HTTP/1.1 200")  # positive control: the first POST got through
    assert leaked == 0 and not goal
    assert reason == "mining"


@pytest.mark.parametrize("tls", [True, False], ids=["decrypted", "plain"])
@pytest.mark.parametrize("variant", ["upgrade-rawtcp", "upgrade-h2c", "unprompted-101"])
def test_mitm_upgrade_to_a_raw_relay(lab: SecurityLab, site: Attacker, variant: str, tls: bool) -> None:
    leaked, goal, reason, answers = _play(lab, site, variant, tls)
    report(f"mitm/{variant}-{'tls' if tls else 'plain'}", "tunnel", leaked, goal, reason)
    assert not any(answer.startswith(b"HTTP/1.1 101") for answer in answers)
    assert leaked == 0 and not goal
    assert reason == "tunnel"


@pytest.mark.parametrize("variant", ["ws-mining-after-16kb", "ws-random-binary"])
def test_mitm_websocket_messages(lab: SecurityLab, site: Attacker, variant: str) -> None:
    leaked, goal, reason, answers = _play(lab, site, variant, True)
    report(f"mitm/{variant}", "mining" if "mining" in variant else "tunnel", leaked, goal, reason)
    assert answers[:1] == [b"ack"]  # positive control: the first message reached the site
    assert answers[-1] == b"closed"
    assert leaked == 0 and not goal
    assert reason in {"mining", "tunnel"}
