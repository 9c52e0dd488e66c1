"""The resolver's answer cache: what it keeps, for how long, within what bound, and that every hit is still judged."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Iterator

import pytest

from egress.detect import dns
from egress.detect.names import NameLists
from egress.dnsserver import answers as answers_module
from egress.dnsserver.bindings import Bindings
from egress.dnsserver.cache import MAX_TTL, NEGATIVE_TTL, AnswerCache, aged, lifetime
from egress.dnsserver.forward import upstream_query
from egress.dnsserver.resolver import Upstream
from egress.policy.loader import parse_policy
from tests.dnsserver.test_resolver import POLICY, SANDBOX, Clock, FakeUpstream, Recorded, ask

ADDRESS = bytes([93, 184, 216, 34])


def _a(name: str, ttl: int, address: bytes = ADDRESS) -> dns.Record:
    return dns.Record(dns.name_labels(name), dns.A, ttl, address)


def _soa(ttl: int, minimum: int) -> dns.Record:
    names = dns.encode_name("ns.lab") + dns.encode_name("admin.lab")
    return dns.Record(dns.name_labels("lab"), dns.SOA, ttl, names + bytes(16) + minimum.to_bytes(4, "big"))


def _answer(rcode: int = dns.NOERROR, answers: tuple[dns.Record, ...] = (), authorities: tuple[dns.Record, ...] = (),
            flags: int = 0) -> dns.Message:  # fmt: skip
    return dns.Message(1, dns.QR | dns.RA | rcode | flags, (), answers, authorities)


def _forwarded(name: str, qtype: int = dns.A, ident: int = 0) -> bytes:
    query = dns.parse(dns.build_query(ident, name, qtype))
    return upstream_query(query, query.questions[0], ident=ident)


def test_an_answer_lives_for_its_smallest_ttl_capped() -> None:
    assert lifetime(_answer(answers=(_a("x.lab", 300), _a("x.lab", 60)))) == 60
    assert lifetime(_answer(answers=(_a("x.lab", 10**6),))) == MAX_TTL
    assert lifetime(_answer(answers=(_a("x.lab", 0),))) == 0


def test_a_negative_answer_lives_for_its_soa_and_not_without_one() -> None:
    assert lifetime(_answer(dns.NXDOMAIN, authorities=(_soa(900, 120),))) == 120
    assert lifetime(_answer(dns.NOERROR, authorities=(_soa(30, 120),))) == 30  # NODATA: the smaller of the two
    assert lifetime(_answer(dns.NXDOMAIN, authorities=(_soa(10**6, 10**6),))) == NEGATIVE_TTL
    assert lifetime(_answer(dns.NXDOMAIN)) == 0


@pytest.mark.parametrize("rcode", [dns.SERVFAIL, dns.REFUSED, dns.FORMERR, dns.NOTIMP])
def test_failures_are_never_kept(rcode: int) -> None:
    assert lifetime(_answer(rcode, answers=(_a("x.lab", 60),), authorities=(_soa(60, 60),))) == 0


def test_truncated_or_partly_read_answers_are_never_kept() -> None:
    assert lifetime(_answer(answers=(_a("x.lab", 60),), flags=dns.TC)) == 0
    broken = dns.Message(1, dns.QR, (), (_a("x.lab", 60),), problem="cut short")
    assert lifetime(broken) == 0


def test_a_hit_hands_out_the_time_that_remains_until_it_expires() -> None:
    clock = Clock()
    cache = AnswerCache(clock=clock)
    message = _answer(answers=(_a("x.lab", 60),))
    cache.put(_forwarded("x.lab", ident=1), message)
    hit = cache.get(_forwarded("x.lab", ident=2))  # the id is no part of the key
    assert hit is not None and (hit.message, hit.age) == (message, 0)
    clock.now += 45.5
    hit = cache.get(_forwarded("x.lab", ident=3))
    assert hit is not None and hit.message == message and hit.age == 45
    assert [record.ttl for record in aged(hit.message.answers, hit.age)] == [15]
    clock.now += 14.5
    assert cache.get(_forwarded("x.lab")) is None
    assert (cache.hits, cache.misses, len(cache)) == (2, 1, 0)


def test_the_key_is_everything_that_shapes_the_answer() -> None:
    cache = AnswerCache(clock=Clock())
    cache.put(_forwarded("x.lab"), _answer(answers=(_a("x.lab", 60),)))
    assert cache.get(_forwarded("x.lab", dns.AAAA)) is None
    assert cache.get(_forwarded("y.lab")) is None
    assert cache.get(_forwarded("X.LAB")) is not None  # forwarded lowercased: one entry


def test_aging_lowers_every_ttl_but_never_below_zero_and_keeps_opt_flags() -> None:
    opt = dns.Record((), dns.OPT, 0x8000, b"", 1232)
    assert aged((_a("x.lab", 60), _a("x.lab", 5), opt), 10) == (_a("x.lab", 50), _a("x.lab", 0), opt)


def test_an_answer_that_may_not_be_kept_is_still_handed_back() -> None:
    cache = AnswerCache(clock=Clock())
    failed = _answer(dns.SERVFAIL)
    assert cache.put(_forwarded("x.lab"), failed).message == failed
    assert cache.get(_forwarded("x.lab")) is None and len(cache) == 0


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    cache = AnswerCache(max_entries=3, clock=Clock())
    for index in range(3):
        cache.put(_forwarded(f"n{index}.lab"), _answer(answers=(_a(f"n{index}.lab", 60),)))
    assert cache.get(_forwarded("n0.lab")) is not None  # n0 used: n1 is now the oldest
    for index in range(3, 1000):
        cache.put(_forwarded(f"n{index}.lab"), _answer(answers=(_a(f"n{index}.lab", 60),)))
        assert len(cache) <= 3
    assert cache.get(_forwarded("n1.lab")) is None and cache.get(_forwarded("n999.lab")) is not None


@pytest.fixture
def resolver(tmp_path: pathlib.Path) -> Iterator[FakeUpstream]:
    bindings = Bindings(tmp_path / "bindings.db")
    clock = Clock()
    core = FakeUpstream(parse_policy(POLICY), Upstream("192.0.2.53"), bindings, Recorded(), NameLists([]), clock=clock)
    core.forwarded, core.upstream_answer = [], []
    yield core
    bindings.close()


def test_a_name_asked_again_is_answered_from_the_cache_and_bound_again(resolver: FakeUpstream) -> None:
    resolver.upstream_answer = [_a("allowed.lab", 60)]
    first = ask(resolver, dns.build_query(1, "allowed.lab", dns.A))
    assert isinstance(resolver.clock, Clock)
    resolver.clock.now += 20
    second = ask(resolver, dns.build_query(2, "ALLOWED.lab", dns.A))
    assert len(resolver.forwarded) == 1
    assert first is not None and second is not None and second.id == 2
    assert dns.addresses(second) == [("93.184.216.34", 40)]
    assert second.questions == dns.parse(dns.build_query(2, "ALLOWED.lab", dns.A)).questions
    assert resolver.bindings.is_bound("agent", "allowed.lab", "93.184.216.34")


def test_every_cached_query_is_decided_and_reported(resolver: FakeUpstream) -> None:
    resolver.upstream_answer = [_a("a.x.lab", 60)]
    for ident in range(5):
        ask(resolver, dns.build_query(ident, "a.x.lab", dns.A))
    assert len(resolver.forwarded) == 1
    assert isinstance(resolver.reporter, Recorded)
    assert [flow.host for flow in resolver.reporter.flows] == ["a.x.lab"] * 5


def test_a_cached_answer_is_judged_again_for_each_asker(resolver: FakeUpstream) -> None:
    """The deny range holds on a hit as on a miss: the cache keeps the upstream's answer, not a verdict."""
    resolver.upstream_answer = [_a("bad.x.lab", 60, bytes([93, 184, 216, 201]))]
    for ident in range(2):
        answer = ask(resolver, dns.build_query(ident, "bad.x.lab", dns.A))
        assert answer is not None and answer.rcode == dns.REFUSED and dns.addresses(answer) == []
    assert len(resolver.forwarded) == 1
    assert not resolver.bindings.is_bound("agent", "bad.x.lab", "93.184.216.201")


def test_a_refused_name_is_never_looked_up_even_when_cached(resolver: FakeUpstream) -> None:
    resolver.upstream_answer = [_a("a.x.lab", 60)]
    ask(resolver, dns.build_query(1, "a.x.lab", dns.A))
    outsider = ask(resolver, dns.build_query(2, "a.x.lab", dns.A), client=("10.9.9.9", 4000))
    assert outsider is not None and outsider.rcode == dns.REFUSED and dns.addresses(outsider) == []


def test_a_failed_upstream_is_not_kept(resolver: FakeUpstream) -> None:
    calls: list[bytes] = []

    async def failing(query: bytes) -> bytes | None:
        calls.append(query)
        return None

    resolver._forward = failing  # type: ignore[method-assign]
    for ident in range(2):
        answer = ask(resolver, dns.build_query(ident, "allowed.lab", dns.A))
        assert answer is not None and answer.rcode == dns.SERVFAIL
    assert len(calls) == 2


def test_a_burst_of_one_name_costs_one_upstream_exchange(resolver: FakeUpstream) -> None:
    resolver.upstream_answer = [_a("allowed.lab", 60)]
    release = asyncio.Event()
    plain = resolver._forward

    async def slow(query: bytes) -> bytes | None:
        await release.wait()
        return await plain(query)

    resolver._forward = slow  # type: ignore[method-assign]

    async def burst() -> list[bytes | None]:
        asks = [resolver.answer(dns.build_query(i, "allowed.lab", dns.A), SANDBOX, "udp") for i in range(50)]
        tasks = [asyncio.ensure_future(one) for one in asks]
        while len(resolver._in_flight) < 1:
            await asyncio.sleep(0)
        release.set()
        return list(await asyncio.gather(*tasks))

    answers = asyncio.run(burst())
    assert len(resolver.forwarded) == 1
    assert all(out is not None and dns.parse(out).rcode == dns.NOERROR for out in answers)
    assert sorted(dns.parse(out).id for out in answers if out is not None) == list(range(50))
    assert resolver._in_flight == {}


def test_a_cached_answer_is_judged_once_per_sandbox_and_rule_until_a_reload(resolver: FakeUpstream) -> None:
    resolver.upstream_answer = [_a("a.x.lab", 60)]
    judged: list[str] = []
    real = answers_module.judge

    def counting(*args: object, **kwargs: object) -> object:
        judged.append(str(args[1]))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(answers_module, "judge", counting)
        for ident in range(3):
            ask(resolver, dns.build_query(ident, "a.x.lab", dns.A))
        assert judged == ["a.x.lab"]
        resolver.reload(parse_policy(POLICY))  # new policy objects: judged again under them
        ask(resolver, dns.build_query(9, "a.x.lab", dns.A))
        assert judged == ["a.x.lab", "a.x.lab"]
    assert len(resolver.forwarded) == 1
