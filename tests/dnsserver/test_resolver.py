"""The resolver's core without sockets: what it answers, in bytes, for queries it can and cannot read."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Iterator

import pytest

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


def test_an_allowed_name_is_forwarded_and_its_addresses_bound(resolver: FakeUpstream) -> None:
    query = dns.build_query(7, "Allowed.lab", dns.A)
    resolver.upstream_answer = [dns.Record(dns.name_labels("allowed.lab"), dns.A, 60, bytes([198, 18, 10, 1]))]
    answer = ask(resolver, query)
    assert answer is not None and answer.rcode == dns.NOERROR and answer.id == 7
    assert resolver.forwarded == [query]
    assert resolver.bindings.is_bound("agent", "allowed.lab", "198.18.10.1")


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
