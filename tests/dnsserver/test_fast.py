"""The resolver's fast path (`egress.dnsserver.fast`) answers exactly as the slow path would.

Two resolvers built alike take the same queries on the same clock: one keeps prepared answers, the other has
none (`FastPath(max_entries=0)`), so it takes the slow path every time. Every answer's bytes, every decision
reported, the tunnel tracker's state and the bindings must be the same, for allowed names (in any letter case,
with and without EDNS), refusals, names a detector blocks after being answered fast, answers the resolver refuses
or trims, across clock ticks (the TTLs handed out age) and reloads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import pathlib
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egress.decide import Enforcement
from egress.decisions import DecidedFlow
from egress.detect import dns
from egress.detect.names import NameLists
from egress.dnsserver.bindings import Bindings
from egress.dnsserver.fast import FastPath, key_of
from egress.dnsserver.resolver import Pending, Resolver, Upstream
from egress.policy.loader import parse_policy
from tests.budget import examples
from tests.dnsserver.test_resolver import POLICY, POOLS, SANDBOX, Recorded

WITHOUT_X = POLICY.replace('        - "*.x.lab"\n', "", 1)
"""The same policy with the rule that allows ``*.x.lab`` (for the agent) taken out: a reload refuses those."""

NAMES = (
    "allowed.lab",
    "a.x.lab",
    "b.x.lab",
    "deny.x.lab",  # its answer points into deny_ranges: refused after the upstream answered
    "mixed.x.lab",  # one address kept, one dropped (non-global): two decisions
    "gone.x.lab",  # NXDOMAIN with an SOA: a negative answer, cached
    "zero.x.lab",  # TTL 0: never cached
    "blocked.lab",  # not allowed
    "eu.pool.example",  # on a name list
    *(f"{word}.x.lab" for word in ("d41d8cd98f00b204e9", "9e107d9d372bb6826b", "e4d909c290d0fb1ca0")),
    *(f"{word}.x.lab" for word in ("5d41402abc4b2a76b9", "7215ee9c7d9dc229d2", "c4ca4238a0b923820d")),
)
"""Names the property draws from; the hex ones are encoded subdomains: five of them put x.lab on hold."""


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


class Answering(Resolver):
    """The resolver with a fake upstream that answers each name the same way every time."""

    async def _forward(self, query: bytes) -> bytes | None:
        message = dns.parse(query)
        question = message.questions[0]
        name = question.name
        labels = question.labels
        if name == "gone.x.lab":
            soa = dns.encode_name("x.lab") + dns.encode_name("admin.x.lab") + bytes(16) + (30).to_bytes(4)
            authority = dns.Record(dns.name_labels("x.lab"), dns.SOA, 60, soa)
            flags = dns.QR | dns.RA | (message.flags & dns.RD) | dns.NXDOMAIN
            return dns.encode(dataclasses.replace(message, flags=flags, authorities=(authority,)))
        ttl = 0 if name == "zero.x.lab" else 120
        if question.qtype == dns.AAAA:
            records = [dns.Record(labels, dns.AAAA, ttl, ipaddress.IPv6Address("2606:4700::6810:84e5").packed)]
        elif name == "deny.x.lab":
            records = [dns.Record(labels, dns.A, ttl, bytes([93, 184, 216, 201]))]
        elif name == "mixed.x.lab":
            records = [
                dns.Record(labels, dns.A, ttl, bytes([10, 0, 0, 1])),
                dns.Record(labels, dns.A, ttl, b"\x5d\xb8\xd8\x22"),
            ]
        else:
            records = [dns.Record(labels, dns.A, ttl, bytes([93, 184, 216, 34]))]
        return dns.build_response(message, dns.NOERROR, records, recursion_available=True)


class Twins:
    """A resolver with the fast path and one without, on one clock."""

    def __init__(self, tmp: pathlib.Path) -> None:
        self.clock = Clock()
        self.loop = asyncio.new_event_loop()
        self.fast = self._resolver(tmp / "fast.db")
        self.slow = self._resolver(tmp / "slow.db")
        self.slow.fast = FastPath(max_entries=0)

    def _resolver(self, path: pathlib.Path) -> Answering:
        lists = NameLists([POOLS])
        return Answering(
            parse_policy(POLICY), Upstream("192.0.2.53"), Bindings(path), Recorded(), lists, clock=self.clock
        )

    def ask(self, query: bytes, client: tuple[str, int] = SANDBOX) -> bytes | None:
        """Both answers to ``query``; asserts they and everything they left behind are the same."""
        out = [self._answer(resolver, query, client) for resolver in (self.fast, self.slow)]
        assert unnamed(out[0]) == unnamed(out[1]), [dns.parse(one) if one else None for one in out]
        assert decisions(self.fast) == decisions(self.slow)
        assert tracked(self.fast) == tracked(self.slow)
        assert (self.fast.answered, self.fast.refused) == (self.slow.answered, self.slow.refused)
        assert (self.fast.cache.hits, self.fast.cache.misses) == (self.slow.cache.hits, self.slow.cache.misses)
        return out[0]

    def _answer(self, resolver: Resolver, query: bytes, client: tuple[str, int]) -> bytes | None:
        result = resolver.answer_now(query, client, "udp")
        resolver.flush_reports()  # as the socket's reader does after each read
        if isinstance(result, Pending):
            return self.loop.run_until_complete(resolver.finish(result))
        return result

    def reload(self, text: str) -> None:
        for resolver in (self.fast, self.slow):
            resolver.reload(parse_policy(text))

    def close(self) -> None:
        self.loop.close()
        self.fast.bindings.close()
        self.slow.bindings.close()


def unnamed(response: bytes | None) -> bytes | None:
    """A response with the record id a refusal names (`egress.record.naming`: made of the second it fell in)
    blanked."""
    if response is None or b"; record " not in response:
        return response
    head, _, tail = response.partition(b"; record ")
    return head + b"; record " + b"?" * len(tail)


def decisions(resolver: Resolver) -> list[tuple[object, ...]]:
    """The decisions reported, but for when (and the record id that names the second they fell in)."""
    reporter = resolver.reporter
    assert isinstance(reporter, Recorded)
    return [_without_time(flow) for flow in reporter.flows]


def _without_time(flow: DecidedFlow) -> tuple[object, ...]:
    return (flow.sandbox, flow.src, flow.sport, flow.dst, flow.dport, flow.transport, flow.host, flow.verdict,
            flow.count, bool(flow.record_id))  # fmt: skip


def tracked(resolver: Resolver) -> dict[str, object]:
    return {name: repr(sorted(tracker._states.items())) for name, tracker in resolver._trackers.items()}


def query(ident: int, name: str, qtype: int = dns.A, upper: int = 0, edns: bool = False) -> bytes:
    """A query for ``name`` with the letters chosen by the bits of ``upper`` in capitals, EDNS if asked."""
    text = "".join(c.upper() if c.isalpha() and upper >> (i % 16) & 1 else c for i, c in enumerate(name))
    additionals = (dns.Record((), dns.OPT, 0, b"", 1232),) if edns else ()
    return dns.encode(
        dns.Message(ident, dns.RD, (dns.Question(dns.name_labels(text), qtype),), additionals=additionals)
    )


@pytest.fixture
def twins(tmp_path: pathlib.Path) -> Iterator[Twins]:
    pair = Twins(tmp_path)
    yield pair
    pair.close()


def test_a_repeat_is_answered_fast_with_its_own_id_and_letter_case(twins: Twins) -> None:
    first = twins.ask(query(1, "allowed.lab"))
    assert first is not None and twins.fast.fast.hits == 0
    again = query(0xBEEF, "allowed.lab", upper=0b1010101)
    answer = twins.ask(again)
    assert twins.fast.fast.hits == 1
    assert (
        answer is not None and answer[:2] == b"\xbe\xef" and dns.parse(answer).questions == dns.parse(again).questions
    )
    assert dns.addresses(dns.parse(answer)) == [("93.184.216.34", 120)]
    assert twins.fast.bindings.is_bound("agent", "allowed.lab", "93.184.216.34")
    assert [flow.verdict.action for flow in twins.fast.reporter.flows] == [Enforcement.ALLOW] * 2  # type: ignore[attr-defined]


def test_the_ttls_age_and_the_entry_is_made_again_each_second(twins: Twins) -> None:
    twins.ask(query(1, "a.x.lab", edns=True))
    twins.clock.now += 7.5
    answer = twins.ask(query(2, "a.x.lab", edns=True))
    assert answer is not None and dns.addresses(dns.parse(answer)) == [("93.184.216.34", 113)]
    assert twins.fast.fast.hits == 0  # the age moved: the slow path answered and prepared it again
    twins.ask(query(3, "a.x.lab", edns=True))
    assert twins.fast.fast.hits == 1


def test_refusals_and_trimmed_answers_are_never_prepared(twins: Twins) -> None:
    for name in ("blocked.lab", "eu.pool.example", "deny.x.lab", "mixed.x.lab", "zero.x.lab"):
        for ident in range(3):
            twins.ask(query(ident, name))
    assert twins.fast.fast.hits == 0
    assert not twins.fast.fast.entries.get((SANDBOX[0], query(0, "zero.x.lab")[2:]))


def test_a_domain_held_for_tunnelling_is_refused_at_once_though_a_name_under_it_was_answered_fast(
    twins: Twins,
) -> None:
    twins.ask(query(1, "a.x.lab"))
    twins.ask(query(2, "a.x.lab"))
    assert twins.fast.fast.hits == 1
    for ident, name in enumerate(NAMES[-6:-1]):  # five encoded subdomains: x.lab is held
        twins.ask(query(10 + ident, name))
    refused = twins.ask(query(3, "a.x.lab"))
    assert refused is not None and dns.parse(refused).rcode == dns.REFUSED
    assert twins.fast.fast.hits == 1
    assert decisions(twins.fast)[-1][6] == "x.lab"  # counted into the held domain's record


def test_a_reload_voids_every_prepared_answer(twins: Twins) -> None:
    twins.ask(query(1, "b.x.lab"))
    twins.ask(query(2, "b.x.lab"))
    twins.reload(WITHOUT_X)
    refused = twins.ask(query(3, "b.x.lab"))
    assert refused is not None and dns.parse(refused).rcode == dns.REFUSED
    assert twins.fast.fast.hits == 1 and not twins.fast.fast.entries


def test_a_query_the_key_cannot_read_takes_the_slow_path(twins: Twins) -> None:
    plain = query(1, "allowed.lab")
    pointer = plain[:12] + b"\xc0\x0c" + plain[-4:]
    assert key_of(pointer, SANDBOX[0]) is None and key_of(plain[:-1], SANDBOX[0]) is None
    assert key_of(plain + b"x", SANDBOX[0]) is not None  # a distinct key: the slow path refuses it (FORMERR)
    twins.ask(plain)
    twins.ask(plain + b"x")
    twins.ask(pointer)
    assert twins.fast.fast.hits == 0


@dataclasses.dataclass(frozen=True, slots=True)
class Ask:
    name: str
    qtype: int
    upper: int
    edns: bool
    client: tuple[str, int]


STEP = st.one_of(
    st.builds(
        Ask,
        st.sampled_from(NAMES),
        st.sampled_from((dns.A, dns.AAAA, dns.TXT)),
        st.integers(0, 0xFFFF),
        st.booleans(),
        st.sampled_from((SANDBOX, ("10.203.1.11", 5353), ("10.203.9.4", 1234), ("192.0.2.99", 53))),
    ),
    st.floats(0.1, 400.0),  # the clock moves
    st.sampled_from((POLICY, WITHOUT_X)),  # a reload
)


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(STEP, min_size=1, max_size=40))
def test_the_fast_path_answers_decides_and_counts_as_the_slow_path(
    tmp_path_factory: pytest.TempPathFactory, steps: list[Ask | float | str]
) -> None:
    pair = Twins(tmp_path_factory.mktemp("twins"))
    try:
        for ident, step in enumerate(steps):
            if isinstance(step, float):
                pair.clock.now += step
            elif isinstance(step, str):
                pair.reload(step)
            else:
                pair.ask(query(ident, step.name, step.qtype, step.upper, step.edns), step.client)
                again = query(ident + 1000, step.name, step.qtype, step.upper ^ 0x5, step.edns)  # other letter case
                pair.ask(again, step.client)
        for address in ("93.184.216.34", "2606:4700::6810:84e5"):
            for sandbox in ("agent", "shadow"):
                assert pair.fast.bindings.names_for(sandbox, address) == pair.slow.bindings.names_for(sandbox, address)
    finally:
        pair.close()


def test_the_allowed_decisions_of_one_read_are_reported_as_one_with_their_count(twins: Twins) -> None:
    """`UdpServer` flushes after each read of the socket; a refusal within the read is reported at once."""
    resolver = twins.fast
    twins.ask(query(1, "allowed.lab"))
    before = len(resolver.reporter.flows)  # type: ignore[attr-defined]
    for port in (1000, 1001, 1002):
        assert isinstance(resolver.answer_now(query(port, "allowed.lab"), (SANDBOX[0], port), "udp"), bytes)
    resolver.answer_now(query(9, "blocked.lab"), SANDBOX, "udp")
    flows: list[DecidedFlow] = resolver.reporter.flows[before:]  # type: ignore[attr-defined]
    assert [(flow.host, flow.verdict.action) for flow in flows] == [("blocked.lab", Enforcement.BLOCK)]
    resolver.flush_reports()
    merged = resolver.reporter.flows[-1]  # type: ignore[attr-defined]
    assert (merged.host, merged.sport, merged.count, merged.verdict.action) == (
        "allowed.lab",
        1000,
        3,
        Enforcement.ALLOW,
    )
    assert resolver.fast.hits == 3 and not resolver.batch


def test_one_read_binds_and_offers_an_answer_once_and_the_next_read_again(twins: Twins) -> None:
    """Within one read the repeats of an entry would write nothing (the bindings' and allow sets' refresh
    margins); the entry's first use in each read binds and offers its addresses."""
    resolver = twins.fast
    offered: list[tuple[str, list[tuple[str, int]]]] = []
    resolver.on_answer = lambda sandbox, found: offered.append((sandbox, found))
    twins.ask(query(1, "allowed.lab"))  # the slow path answers, binds, offers and prepares
    resolver.bindings.clear()
    for port in (1000, 1001, 1002):
        assert isinstance(resolver.answer_now(query(port, "allowed.lab"), (SANDBOX[0], port), "udp"), bytes)
    assert offered == [("agent", [("93.184.216.34", 120)])] * 2
    assert resolver.bindings.is_bound("agent", "allowed.lab", "93.184.216.34")
    resolver.flush_reports()  # the read ends
    resolver.bindings.clear()
    assert isinstance(resolver.answer_now(query(7, "allowed.lab"), SANDBOX, "udp"), bytes)
    assert len(offered) == 3 and resolver.bindings.is_bound("agent", "allowed.lab", "93.184.216.34")
    assert resolver.fast.hits == 4
