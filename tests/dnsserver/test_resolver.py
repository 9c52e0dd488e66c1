"""The resolver's core without sockets: what it answers, in bytes, for queries it can and cannot read."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Iterator

import pytest

from egress.decide import Enforcement, Reason
from egress.decisions import DecidedFlow
from egress.detect import dns
from egress.detect.names import NameLists
from egress.dnsserver.bindings import Bindings
from egress.dnsserver.resolver import Resolver, Upstream
from egress.policy.loader import parse_policy

POLICY = """
version: 1
sandboxes:
  agent:
    sources: [10.203.1.0/24]
    mode: enforce
    allow:
      hosts:
        - {host: allowed.lab, ports: [443]}
"""
SANDBOX = ("10.203.1.10", 40000)


class Recorded:
    def __init__(self) -> None:
        self.flows: list[DecidedFlow] = []

    def report(self, attempt: DecidedFlow) -> None:
        self.flows.append(attempt)

    def allowed(self, component: str) -> None:
        pass


class FakeUpstream(Resolver):
    """The resolver with its upstream replaced: records what it forwards, answers with ``upstream_answer``."""

    forwarded: list[bytes]
    upstream_answer: list[dns.Record]

    async def _forward(self, query: bytes) -> bytes | None:
        self.forwarded.append(query)
        return dns.build_response(dns.parse(query), dns.NOERROR, self.upstream_answer, recursion_available=True)


@pytest.fixture
def resolver(tmp_path: pathlib.Path) -> Iterator[FakeUpstream]:
    bindings = Bindings(tmp_path / "bindings.db")
    core = FakeUpstream(parse_policy(POLICY), Upstream("192.0.2.53"), bindings, Recorded(), NameLists([]))
    core.forwarded, core.upstream_answer = [], []
    yield core
    bindings.close()


def ask(resolver: Resolver, query: bytes, client: tuple[str, int] = SANDBOX) -> dns.Message | None:
    out = asyncio.run(resolver.answer(query, client, "udp"))
    return None if out is None else dns.parse(out)


def test_an_allowed_name_is_forwarded_rebuilt_and_its_addresses_bound(resolver: FakeUpstream) -> None:
    query = dns.build_query(7, "Allowed.lab", dns.A)
    resolver.upstream_answer = [dns.Record(dns.name_labels("allowed.lab"), dns.A, 60, bytes([93, 184, 216, 34]))]
    answer = ask(resolver, query)
    assert answer is not None and answer.rcode == dns.NOERROR and answer.id == 7
    assert answer.questions == dns.parse(query).questions  # the client's own letter case comes back
    [sent] = [dns.parse(one) for one in resolver.forwarded]
    assert [question.labels for question in sent.questions] == [(b"allowed", b"lab")]  # judged: lowercase
    assert (sent.answers, sent.authorities, sent.additionals) == ((), (), ())
    assert dns.addresses(answer) == [("93.184.216.34", 60)]
    assert resolver.bindings.is_bound("agent", "allowed.lab", "93.184.216.34")


@pytest.mark.parametrize(
    ("name", "client", "rcode"),
    [
        ("blocked.lab", SANDBOX, dns.REFUSED),
        ("use-application-dns.net", SANDBOX, dns.NXDOMAIN),
        ("allowed.lab", ("192.0.2.99", 40000), dns.REFUSED),  # not a sandbox
    ],
)
def test_refusals_echo_the_question_and_forward_nothing(
    resolver: FakeUpstream, name: str, client: tuple[str, int], rcode: int
) -> None:
    query = dns.build_query(9, name, dns.A)
    answer = ask(resolver, query, client)
    assert answer is not None
    assert (answer.id, answer.rcode, answer.is_response) == (9, rcode, True)
    assert answer.flags & dns.RA and answer.flags & dns.RD
    assert answer.questions == dns.parse(query).questions
    assert resolver.forwarded == []


@pytest.mark.parametrize(
    "query",
    [
        dns.build_query(3, "allowed.lab", dns.A) + b"secret",  # bytes after the question
        dns.build_query(3, "allowed.lab", dns.A)[:-1],  # question cut short
        dns.build_query(3, "allowed.lab", dns.A)[:12] + b"\xc0\x0c\x00\x01\x00\x01",  # pointer to itself
    ],
    ids=["trailing-bytes", "cut", "pointer-loop"],
)
def test_a_query_that_does_not_parse_whole_gets_formerr_and_is_not_forwarded(
    resolver: FakeUpstream, query: bytes
) -> None:
    answer = ask(resolver, query)
    assert answer is not None and (answer.id, answer.rcode) == (3, dns.FORMERR)
    assert resolver.forwarded == []


def test_a_response_or_an_empty_query_gets_formerr(resolver: FakeUpstream) -> None:
    question = dns.parse(dns.build_query(4, "allowed.lab", dns.A))
    response = ask(resolver, dns.build_response(question, dns.NOERROR))
    empty = ask(resolver, dns.encode(dns.Message(5, dns.RD)))
    assert response is not None and response.rcode == dns.FORMERR
    assert empty is not None and empty.rcode == dns.FORMERR
    assert resolver.forwarded == []


def test_shorter_than_a_header_gets_no_answer(resolver: FakeUpstream) -> None:
    assert ask(resolver, b"\x00\x01\x02") is None


def flows(resolver: Resolver) -> list[DecidedFlow]:
    reporter = resolver.reporter
    assert isinstance(reporter, Recorded)
    return reporter.flows


def raw_query(ident: int, labels: tuple[bytes, ...], qtype: int = dns.TXT, flags: int = dns.RD) -> bytes:
    return dns.encode(dns.Message(ident, flags, (dns.Question(labels, qtype),)))


EXFIL_NAMES = [
    (b"allowed", b"lab:secret", b"evil"),  # what `dig 'allowed.lab:secret.evil'` sends
    (b"allowed", b"lab:53"),
    (b"[allowed", b"lab]", b"secret", b"evil"),
    (b"[allowed", b"lab]"),
    (b"secret.evil", b"allowed", b"lab"),  # an escaped dot: a label "secret.evil" under allowed.lab
    (b"s\x00cret", b"allowed", b"lab"),
    (b"s cret", b"allowed", b"lab"),
    (b"s\xe9cret", b"allowed", b"lab"),
    (b"allowed", b"lab/x"),
]


@pytest.mark.parametrize("qtype", [dns.A, dns.TXT, dns.NULL, dns.AAAA, 255])
@pytest.mark.parametrize("labels", EXFIL_NAMES, ids=lambda labels: repr(b".".join(labels)))
def test_a_name_that_is_no_hostname_is_refused_recorded_and_never_forwarded(
    resolver: FakeUpstream, labels: tuple[bytes, ...], qtype: int
) -> None:
    query = raw_query(11, labels, qtype)
    answer = ask(resolver, query)
    assert answer is not None and answer.rcode in (dns.REFUSED, dns.FORMERR)
    assert resolver.forwarded == []
    [flow] = flows(resolver)
    assert flow.verdict.reason is Reason.DNS_MALFORMED and flow.verdict.action is Enforcement.BLOCK


@pytest.mark.parametrize(
    ("message", "rcode", "why"),
    [
        (
            dns.Message(12, dns.RD, (dns.Question((b"allowed", b"lab"), dns.A), dns.Question((b"evil",), dns.TXT))),
            dns.FORMERR,
            "2 questions",
        ),
        (dns.Message(12, dns.RD | (2 << 11), (dns.Question((b"allowed", b"lab"), dns.A),)), dns.NOTIMP, "opcode 2"),
        (dns.Message(12, 5 << 11, (dns.Question((b"allowed", b"lab"), dns.SOA),)), dns.NOTIMP, "opcode 5"),
        (dns.Message(12, dns.RD, (dns.Question((b"allowed", b"lab"), dns.TXT, 3),)), dns.REFUSED, "class 3"),
    ],
    ids=["two-questions", "status-opcode", "update-opcode", "chaos-class"],
)
def test_only_one_standard_question_is_forwarded(
    resolver: FakeUpstream, message: dns.Message, rcode: int, why: str
) -> None:
    answer = ask(resolver, dns.encode(message))
    assert answer is not None and answer.rcode == rcode
    assert resolver.forwarded == []
    [flow] = flows(resolver)
    assert flow.verdict.reason is Reason.DNS_MALFORMED and why in flow.verdict.evidence


def test_records_and_edns_options_of_the_query_are_not_forwarded(resolver: FakeUpstream) -> None:
    secret = dns.Record((b"secret", b"evil"), dns.TXT, 0, dns.txt_data([b"the secret"]))
    option = (65001).to_bytes(2) + (10).to_bytes(2) + b"the secret"
    opt = dns.Record((), dns.OPT, 0x8000, option, 4096)
    query = dns.Message(13, dns.RD, (dns.Question((b"allowed", b"lab"), dns.A),), (secret,), (secret,), (secret, opt))
    answer = ask(resolver, dns.encode(query))
    assert answer is not None and answer.rcode == dns.NOERROR
    [sent] = resolver.forwarded
    assert b"secret" not in sent
    forwarded = dns.parse(sent)
    assert (forwarded.answers, forwarded.authorities) == ((), ())
    [fresh] = forwarded.additionals
    assert (fresh.rtype, fresh.data, fresh.ttl & 0x8000) == (dns.OPT, b"", 0x8000)  # DO kept, options gone


def test_a_large_answer_to_a_client_without_edns_is_truncated(resolver: FakeUpstream) -> None:
    resolver.upstream_answer = [
        dns.Record(dns.name_labels("allowed.lab"), dns.A, 60, bytes([93, 184, 216, n])) for n in range(1, 60)
    ]
    udp = ask(resolver, dns.build_query(14, "allowed.lab", dns.A))
    assert udp is not None and udp.tc and udp.answers == ()
    tcp = asyncio.run(resolver.answer(dns.build_query(15, "allowed.lab", dns.A), SANDBOX, "tcp"))
    assert tcp is not None and len(dns.parse(tcp).answers) == 59
