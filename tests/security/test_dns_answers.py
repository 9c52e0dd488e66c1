"""Issue 9.7: an allowed wildcard whose zone the attacker runs can point a name at any address, and the gateway
binds and lets through whatever its resolver answered.

The attacker's DNS server (in the internet namespace; ns.lab delegates ``r.lab`` and ``p.lab`` to it,
egress/lab/delegation.py) answers names under the wildcards of tests/security/policies/dns.yaml with the blocked
site's address, the pool's, its own private address (rebinding) or, under the pinned ``*.p.lab``, an address
outside the pin. The agent resolves each through the gateway and connects to what it got, as it would to reach
the blocked site through an allowed name. Judged by the internet-side capture (nothing reaches the target), the
agent's own view (no answer, no connection) and the record (``dns-answer``).
"""

from __future__ import annotations

import json
import sys
import time

import pytest

from egress.lab.topology import GATEWAY_SBX_V4, GATEWAY_SBX_V6, INTERNET_V4, server
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, SecurityLab, report

pytestmark = pytest.mark.security

POLICY = POLICIES / "dns.yaml"
EVIL_DNS_PORT = 5301
EVIL_HTTP_PORT = 8080

EVIL_DNS = r"""
import ipaddress, socket, sys
from egress.detect import dns
answers = {
    "blocked.r.lab": ["198.18.10.2", "2001:db8:10::2"],
    "pool.r.lab": ["198.18.10.3"],
    "rebind.r.lab": ["10.203.2.2", "fd00:203:2::2"],
    "mapped.r.lab": ["::ffff:10.203.2.2"],
    "loop.r.lab": ["127.0.0.1", "::1"],
    "x.p.lab": ["198.18.10.2", "2001:db8:10::2"],
    "ok.p.lab": ["198.18.10.1"],
}
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], int(sys.argv[2])))
print("evil dns listening", flush=True)
while True:
    data, peer = sock.recvfrom(65535)
    query = dns.parse(data)
    question = query.questions[0]
    records = []
    for text in answers.get(question.name, []):
        address = ipaddress.ip_address(text)
        rtype = dns.A if address.version == 4 else dns.AAAA
        if rtype == question.qtype:
            records.append(dns.Record(question.labels, rtype, 300, address.packed))
    print("asked", question.name, question.qtype, flush=True)
    sock.sendto(dns.build_response(query, dns.NOERROR, records, authoritative=True), peer)
"""

AGENT = r"""
import socket, sys
from egress.detect import dns
name, gateway, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
found = []
for qtype in (dns.A, dns.AAAA):
    family = socket.AF_INET6 if ":" in gateway else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(dns.build_query(9, name, qtype), (gateway, 53))
        answer = dns.parse(sock.recv(65535))
    print("rcode", qtype, answer.rcode, flush=True)
    found += [address for address, _ in dns.addresses(answer)]
print("addresses", found, flush=True)
for address in found:
    try:
        with socket.create_connection((address, port), timeout=3) as conn:
            conn.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
            reply = conn.recv(4096)
        print("reply", address, reply[:40], flush=True)
    except OSError as error:
        print("refused", address, error, flush=True)
"""

CASES = [
    # (name, port the agent tries, addresses the attacker wants reached)
    ("blocked.r.lab", 80, ["198.18.10.2", "2001:db8:10::2"]),
    ("pool.r.lab", 3333, ["198.18.10.3"]),
    ("rebind.r.lab", EVIL_HTTP_PORT, ["10.203.2.2", "fd00:203:2::2"]),
    ("mapped.r.lab", EVIL_HTTP_PORT, ["10.203.2.2"]),
    ("loop.r.lab", 80, []),
    ("x.p.lab", 80, ["198.18.10.2", "2001:db8:10::2"]),
]


@pytest.fixture(scope="module")
def evil(lab_factory: LabFactory) -> tuple[SecurityLab, Attacker]:
    lab = lab_factory(POLICY)
    zones = {"r.lab": [INTERNET_V4, EVIL_DNS_PORT], "p.lab": [INTERNET_V4, EVIL_DNS_PORT]}
    (lab.lab.state_dir / "delegations.json").write_text(json.dumps(zones))
    dns_server = lab.attacker("evil-dns", [sys.executable, "-c", EVIL_DNS, INTERNET_V4, str(EVIL_DNS_PORT)])
    dns_server.wait_for("evil dns listening")
    web = lab.attacker("evil-http", [sys.executable, "-m", "http.server", str(EVIL_HTTP_PORT), "--bind", "::"])
    web.wait_for("Serving HTTP")
    return lab, dns_server


@pytest.mark.parametrize("transport", ["v4", "v6"])
@pytest.mark.parametrize(("name", "port", "targets"), CASES, ids=[case[0] for case in CASES])
def test_wildcard_answer_pointing_anywhere(
    evil: tuple[SecurityLab, Attacker], name: str, port: int, targets: list[str], transport: str
) -> None:
    lab, dns_server = evil
    gateway = GATEWAY_SBX_V4 if transport == "v4" else GATEWAY_SBX_V6
    since = time.time()
    with lab.capture(f"dns-answer-{name}") as capture:
        done = lab.sandbox_python(AGENT, name, gateway, str(port))
    crossed = capture.result
    assert crossed is not None
    leaked = sum(crossed.bytes_to(target, port, "tcp") for target in targets)
    contact = sum(crossed.packets_to(target, port, "tcp") for target in targets)
    goal = "reply" in done.stdout
    reason = lab.reason_of(since, lambda r: r.host == name and r.reason == "dns-answer")
    report(f"dns/answer-{name}-{transport}", "dns-rebinding", leaked, goal, reason, f"{contact} packets to the target")
    assert f"asked {name}" in dns_server.log()  # the attacker's zone was asked: the test is real
    assert "addresses []" in done.stdout, done.stdout
    assert leaked == 0 and contact == 0, crossed.table()
    assert not goal, done.stdout
    assert reason == "dns-answer"


def test_pinned_answer_inside_the_pin_is_given(evil: tuple[SecurityLab, Attacker]) -> None:
    """The positive control: the pinned wildcard's name that points inside its pin resolves and connects."""
    lab, _ = evil
    done = lab.sandbox_python(AGENT, "ok.p.lab", GATEWAY_SBX_V4, "80")
    assert f"addresses ['{server('allowed').v4}']" in done.stdout, done.stdout
    assert "reply" in done.stdout, done.stdout
