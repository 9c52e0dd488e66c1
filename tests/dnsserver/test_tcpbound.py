"""`egress.dnsserver.tcpbound`: the resolver's TCP connections bounded per sandbox and in all (pure), and through
`listen.serve` on loopback: a flood of connections from one sandbox is cut at its share, recorded, and the
resolver still answers a new query."""

from __future__ import annotations

import asyncio
import pathlib
import struct

import pytest

from egress.decide import Reason
from egress.detect import dns
from egress.detect.names import NameLists
from egress.dnsserver import listen
from egress.dnsserver.bindings import Bindings
from egress.dnsserver.resolver import Resolver, Upstream
from egress.dnsserver.tcpbound import RULE, Conn, TcpBound
from egress.policy.loader import parse_policy
from tests.dnsserver.test_listen import POLICY
from tests.dnsserver.test_resolver import Recorded
from tests.waiting import eventually_async


class Closes:
    def __init__(self) -> None:
        self.closed: list[tuple[str, int]] = []

    def conn(self, sandbox: str, port: int) -> Conn:
        return Conn(sandbox, ("10.0.0.2", port), lambda: self.closed.append((sandbox, port)))


def test_over_its_share_a_sandbox_loses_its_connection_idle_the_longest() -> None:
    closes = Closes()
    told: list[int] = []
    bound = TcpBound(limit=10, per_sandbox=3, on_closed=lambda conn, count: told.append(count))
    first, second, third = (closes.conn("a", port) for port in (1, 2, 3))
    for conn in (first, second, third):
        assert bound.open(conn)
    bound.busy(first)
    bound.idle(first)  # answered: idle again, now the newest
    assert bound.open(closes.conn("a", 4))
    assert closes.closed == [("a", 2)] and told == [1] and bound.held_by("a") == 3


def test_busy_connections_are_kept_and_the_new_one_is_refused() -> None:
    closes = Closes()
    bound = TcpBound(limit=10, per_sandbox=2)
    one, two = closes.conn("a", 1), closes.conn("a", 2)
    for conn in (one, two):
        assert bound.open(conn)
        bound.busy(conn)
    assert not bound.open(closes.conn("a", 3))
    assert closes.closed == [("a", 3)] and bound.total == 2 and bound.closed == {"a": 1}


def test_over_the_limit_the_largest_sandbox_pays() -> None:
    closes = Closes()
    bound = TcpBound(limit=4, per_sandbox=3)
    for port in (1, 2, 3):
        assert bound.open(closes.conn("flood", port))
    assert bound.open(closes.conn("quiet", 9))
    assert bound.open(closes.conn("quiet", 10))  # the limit: the flooding sandbox's oldest goes
    assert closes.closed == [("flood", 1)] and bound.held_by("quiet") == 2 and bound.total == 4


def test_over_the_limit_a_larger_sandboxs_busy_connections_do_not_shut_another_out() -> None:
    """Red team 7: the flooding sandbox keeps every connection busy (it never reads its answers); a sandbox that
    holds fewer still gets its connections, the flood's oldest closed in their place."""
    closes = Closes()
    bound = TcpBound(limit=4, per_sandbox=4)
    flood = [closes.conn("flood", port) for port in (1, 2, 3, 4)]
    for conn in flood:
        assert bound.open(conn)
        bound.busy(conn)
    assert bound.open(closes.conn("quiet", 9))
    assert bound.open(closes.conn("quiet", 10))
    assert closes.closed == [("flood", 1), ("flood", 2)] and bound.total == 4
    assert not bound.open(closes.conn("quiet", 11)), "even: the newcomer's sandbox would hold more, it is refused"
    assert closes.closed[-1] == ("quiet", 11) and bound.held_by("flood") == 2


def test_release_is_idempotent_and_frees_the_share() -> None:
    closes = Closes()
    bound = TcpBound(limit=2, per_sandbox=1)
    conn = closes.conn("a", 1)
    assert bound.open(conn)
    bound.release(conn)
    bound.release(conn)
    assert bound.total == 0 and bound.open(closes.conn("a", 2)) and closes.closed == []


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        TcpBound(limit=0)


def test_a_flood_of_tcp_connections_is_cut_at_the_share_and_recorded(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty silent connections from one sandbox against a share of eight: twelve closed by the bound, each
    recorded; a new query over TCP is still answered (its connection closes the oldest silent one)."""
    monkeypatch.setattr(listen, "TCP_PER_SANDBOX", 8)
    reporter = Recorded()
    bindings = Bindings(tmp_path / "bindings.db")
    resolver = Resolver(parse_policy(POLICY), Upstream("127.0.0.1", 9), bindings, reporter, NameLists([]))

    async def scenario() -> int:
        handles = await listen.serve(resolver, ["127.0.0.1"], 0)
        port = handles[1].sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]

        async def cut() -> bool:
            assert resolver.tcp_bound_closed == 12
            return True

        await eventually_async(cut)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(dns.tcp_frame(dns.build_query(7, "blocked.lab", dns.A)))
        length = struct.unpack(">H", await reader.readexactly(2))[0]
        rcode = dns.parse(await reader.readexactly(length)).rcode
        for _, held in [*silent, (reader, writer)]:
            held.close()
        for handle in handles:
            handle.close()  # type: ignore[attr-defined]
        return rcode

    try:
        assert asyncio.run(scenario()) == dns.REFUSED
    finally:
        bindings.close()
    closed = [flow for flow in reporter.flows if flow.verdict.rule == RULE]
    assert len(closed) == 13 and {flow.verdict.reason for flow in closed} == {Reason.IDLE_LIMIT}
    assert {flow.sandbox for flow in closed} == {"local"} and {flow.transport for flow in closed} == {"tcp"}
