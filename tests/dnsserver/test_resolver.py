"""The resolver's core without sockets: what it answers, in bytes, for queries it can and cannot read."""

from __future__ import annotations

import asyncio
import ipaddress
import pathlib
from collections.abc import Iterator

import pytest

from egress.decide import Enforcement, Reason
from egress.decisions import DecidedFlow
from egress.detect import dns
from egress.detect.base import Category
from egress.detect.namelist import NameList
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
        - "*.x.lab"
        - {host: "*.pinned.lab", answers: [192.0.2.0/28]}
        - "*.private.lab"
    dns:
      tunnel_hold: 600
      allow_ranges: [198.18.0.0/15]
      deny_ranges: [93.184.216.200/29]
  shadow:
    sources: [10.203.9.0/24]
    interface: sbx9
    mode: report
    allow:
      hosts: ["*.x.lab"]
    dns:
      deny_ranges: [93.184.216.200/29]
"""
SANDBOX = ("10.203.1.10", 40000)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


CLOCK = Clock()
POOLS = NameList(
    file="pools.yaml",
    name="pools",
    category=Category.MINING,
    protocol="pool-domain",
    match="suffix",
    description="test pools",
    sources=(),
    names=("pool.example",),
    addresses=(ipaddress.ip_network("93.184.216.99/32"),),
)


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
    lists = NameLists([POOLS])
    core = FakeUpstream(parse_policy(POLICY), Upstream("192.0.2.53"), bindings, Recorded(), lists, clock=CLOCK)
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


def a_record(name: str, address: str) -> dns.Record:
    ip = ipaddress.ip_address(address)
    return dns.Record(dns.name_labels(name), dns.A if ip.version == 4 else dns.AAAA, 60, ip.packed)


def iodine_query(n: int, ident: int = 20) -> bytes:
    return dns.build_query(ident, f"{n:04d}paaqbaeaj2kbqgmg{n:05d}.x.lab", dns.NULL)


def test_a_domain_found_tunnelling_is_refused_for_the_hold_for_the_whole_sandbox(resolver: FakeUpstream) -> None:
    answers = [ask(resolver, iodine_query(n), ("10.203.1.10", 40000 + n)) for n in range(3)]
    assert [answer.rcode if answer else None for answer in answers] == [dns.NOERROR, dns.NOERROR, dns.REFUSED]
    forwarded = len(resolver.forwarded)
    # afterwards every query under x.lab is refused, from any address of the sandbox, whatever its type
    for n, (client, name, qtype) in enumerate(
        [
            (("10.203.1.77", 5353), "www.x.lab", dns.A),
            (("10.203.1.10", 40000), "0005paaqbaeaj2kbqgmg00005.x.lab", dns.NULL),
            (("10.203.1.200", 1234), "X.LAB.x.lab", dns.TXT),
        ]
    ):
        CLOCK.now += 100
        answer = ask(resolver, dns.build_query(30 + n, name, qtype), client)
        assert answer is not None and answer.rcode == dns.REFUSED
    assert len(resolver.forwarded) == forwarded
    held = [flow for flow in flows(resolver) if flow.verdict.reason is Reason.DNS_TUNNEL]
    assert len(held) == 4 and {flow.host for flow in held[1:]} == {"x.lab"}  # one record key: counted together
    assert ask(resolver, dns.build_query(40, "allowed.lab", dns.A)).rcode == dns.NOERROR  # type: ignore[union-attr]
    CLOCK.now += 600
    assert ask(resolver, dns.build_query(41, "www.x.lab", dns.A)).rcode == dns.NOERROR  # type: ignore[union-attr]


def test_a_reload_does_not_lift_a_hold(resolver: FakeUpstream) -> None:
    for n in range(3):
        ask(resolver, iodine_query(n))
    resolver.reload(parse_policy(POLICY))
    assert ask(resolver, dns.build_query(42, "www.x.lab", dns.A)).rcode == dns.REFUSED  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("name", "address"),
    [
        ("evil.x.lab", "10.0.0.1"),
        ("evil.x.lab", "127.0.0.1"),
        ("evil.x.lab", "169.254.169.254"),
        ("evil.x.lab", "100.64.0.1"),
        ("evil.x.lab", "0.0.0.0"),
        ("evil.x.lab", "::1"),
        ("evil.x.lab", "fd00::1"),
        ("evil.x.lab", "fe80::1"),
        ("evil.x.lab", "::ffff:10.0.0.1"),
        ("evil.x.lab", "64:ff9b::a00:1"),
        ("evil.x.lab", "2002:a00:1::1"),
    ],
)
def test_non_global_answers_are_dropped_and_recorded(resolver: FakeUpstream, name: str, address: str) -> None:
    resolver.upstream_answer = [a_record(name, address), a_record(name, "93.184.216.34")]
    answer = ask(resolver, dns.build_query(50, name, dns.A))
    assert answer is not None and answer.rcode == dns.NOERROR
    assert [found for found, _ in dns.addresses(answer)] == ["93.184.216.34"]
    assert not resolver.bindings.is_bound("agent", name, str(ipaddress.ip_address(address)))
    assert [flow.verdict.reason for flow in flows(resolver)][-1] is Reason.DNS_ANSWER


def test_allow_ranges_let_an_internal_range_through(resolver: FakeUpstream) -> None:
    resolver.upstream_answer = [a_record("svc.private.lab", "198.18.10.1")]
    answer = ask(resolver, dns.build_query(51, "svc.private.lab", dns.A))
    assert answer is not None and dns.addresses(answer) == [("198.18.10.1", 60)]
    assert resolver.bindings.is_bound("agent", "svc.private.lab", "198.18.10.1")


@pytest.mark.parametrize(
    ("name", "address", "rule"),
    [
        ("a.pinned.lab", "93.184.216.34", "sandboxes.agent.allow.hosts[2].answers"),
        ("evil.x.lab", "93.184.216.201", "sandboxes.agent.dns.deny_ranges"),
        ("evil.x.lab", "::ffff:93.184.216.201", "sandboxes.agent.dns.deny_ranges"),
        ("evil.x.lab", "93.184.216.99", "sandboxes.agent.detectors.mining"),
    ],
    ids=["outside-pinned", "denied", "denied-mapped", "pool-address"],
)
def test_an_answer_pointing_where_it_must_not_is_refused_and_nothing_bound(
    resolver: FakeUpstream, name: str, address: str, rule: str
) -> None:
    resolver.upstream_answer = [a_record(name, address)]
    answer = ask(resolver, dns.build_query(52, name, dns.A))
    assert answer is not None and answer.rcode == dns.REFUSED and answer.answers == ()
    assert not resolver.bindings.names_for("agent", str(ipaddress.ip_address(address)))
    flow = flows(resolver)[-1]
    assert flow.verdict.action is Enforcement.BLOCK and flow.verdict.rule == rule


def test_a_cname_to_a_listed_pool_is_refused(resolver: FakeUpstream) -> None:
    resolver.upstream_answer = [
        dns.Record(dns.name_labels("evil.x.lab"), dns.CNAME, 60, dns.encode_name("eu.pool.example")),
        a_record("eu.pool.example", "93.184.216.34"),
    ]
    answer = ask(resolver, dns.build_query(53, "evil.x.lab", dns.A))
    assert answer is not None and answer.rcode == dns.REFUSED
    assert flows(resolver)[-1].verdict.reason is Reason.MINING


def test_pinned_answers_inside_their_cidr_are_given(resolver: FakeUpstream) -> None:
    resolver.upstream_answer = [a_record("a.pinned.lab", "192.0.2.5")]  # pinned: even a non-global range
    answer = ask(resolver, dns.build_query(54, "a.pinned.lab", dns.A))
    assert answer is not None and dns.addresses(answer) == [("192.0.2.5", 60)]


def test_report_mode_gives_the_answer_and_records_what_enforce_would_refuse(resolver: FakeUpstream) -> None:
    resolver.upstream_answer = [a_record("evil.x.lab", "93.184.216.201"), a_record("evil.x.lab", "10.0.0.1")]
    answer = ask(resolver, dns.build_query(55, "evil.x.lab", dns.A), ("10.203.9.5", 5000))
    assert answer is not None and answer.rcode == dns.NOERROR and len(dns.addresses(answer)) == 2
    flow = flows(resolver)[-1]
    assert (flow.verdict.action, flow.verdict.reason) == (Enforcement.WOULD_BLOCK, Reason.DNS_ANSWER)
