"""The idle bound of a proxy worker (egress.proxy.idle), alone and in the front: connections that have not sent a
byte are held up to a share per sandbox and a limit in all, the oldest closed first (never another sandbox's while
the flooder holds more), each close recorded (rate-limited); a connection that speaks leaves the bound."""

from __future__ import annotations

import asyncio
import socket
from functools import partial

import pytest

from egress.decide import Enforcement, Reason
from egress.decisions import DecidedFlow
from egress.detect.names import make_name_detector
from egress.detect.registry import stream_detectors
from egress.policy.loader import parse_policy
from egress.proxy import front as front_module
from egress.proxy.front import Front
from egress.proxy.gate import Gate
from egress.proxy.idle import Held, IdleBound
from tests.lists import shipped_lists
from tests.ports import free_port
from tests.proxy import ORIGIN_ON_LOOPBACK
from tests.waiting import eventually_async, scaled


def _held(sandbox: str, closed: list[str], name: str) -> Held:
    return Held(sandbox, ("10.0.0.1", 1), ("10.0.0.2", 80), lambda: closed.append(name))


def test_a_sandbox_over_its_share_loses_its_own_oldest_idle_connection() -> None:
    closed: list[str] = []
    told: list[tuple[str, int]] = []
    bound = IdleBound(limit=10, per_sandbox=2, on_closed=lambda held, count: told.append((held.sandbox, count)))
    for fd, name in enumerate(["a1", "a2", "a3", "a4"]):
        bound.hold(fd, _held("a", closed, name))
    assert closed == ["a1", "a2"] and told == [("a", 1), ("a", 2)]
    assert bound.held_by("a") == 2 and bound.total == 2 and bound.closed == {"a": 2}


def test_over_the_limit_the_sandbox_holding_the_most_loses_its_oldest_never_the_quiet_one() -> None:
    closed: list[str] = []
    bound = IdleBound(limit=4, per_sandbox=4)
    bound.hold(100, _held("quiet", closed, "q1"))
    for fd in range(6):
        bound.hold(fd, _held("flood", closed, f"f{fd}"))
    bound.hold(101, _held("quiet", closed, "q2"))
    assert "q1" not in closed and "q2" not in closed
    assert closed == ["f0", "f1", "f2", "f3"] and bound.total == 4 and bound.held_by("quiet") == 2


def test_a_connection_that_speaks_or_ends_leaves_the_bound_once() -> None:
    closed: list[str] = []
    bound = IdleBound(limit=2, per_sandbox=2)
    first, second = _held("a", closed, "a1"), _held("a", closed, "a2")
    bound.hold(1, first)
    bound.hold(2, second)
    bound.release(1, first)
    bound.release(1, first)  # again: nothing
    assert bound.total == 1 and bound.held(1) is None and bound.held(2) is second
    bound.hold(3, _held("a", closed, "a3"))
    assert closed == [] and bound.total == 2


def test_bounds_below_one_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        IdleBound(limit=0)


class _Reporter:
    def __init__(self) -> None:
        self.reported: list[DecidedFlow] = []

    def report(self, attempt: DecidedFlow) -> None:
        self.reported.append(attempt)


def test_the_front_closes_the_oldest_silent_connections_records_it_and_still_serves_a_speaking_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(front_module, "PEEK_WAIT", scaled(60))  # silent ones stay in the front's wait
    asyncio.run(_front_scenario())


async def _front_scenario() -> None:
    policy = parse_policy(
        """
version: 1
sandboxes:
  box:
    sources: [127.0.0.0/8]
    mode: enforce
    allow:
      hosts:
        - {host: allowed.test, ports: [9]}
"""
    )
    lists = shipped_lists()
    gate = Gate(
        policy,
        lambda _s, _a: frozenset({"allowed.test"}),
        make_name_detector(lists),
        stream_detectors(lists),
        this_host=ORIGIN_ON_LOOPBACK,
    )
    reporter = _Reporter()
    handed: list[bytes] = []

    async def handoff(conn: socket.socket, _peer: tuple[str, int]) -> None:
        handed.append(conn.recv(100))
        conn.close()

    front = Front(gate, reporter, handoff, destination=lambda _: ("127.0.0.1", 9), idle=IdleBound(10, per_sandbox=3))
    port = free_port()
    serving = asyncio.create_task(front.serve(port, hosts=("127.0.0.1",)))
    loop = asyncio.get_running_loop()
    clients: list[socket.socket] = []
    try:

        async def held(count: int) -> bool:
            assert front.idle.total == count, front.idle.total
            return True

        async def listening() -> bool:
            assert front._listeners
            return True

        await eventually_async(listening, timeout=10)
        for n in range(5):
            client = socket.socket()
            client.setblocking(False)
            await loop.sock_connect(client, ("127.0.0.1", port))
            clients.append(client)
            await eventually_async(partial(held, min(n + 1, 3)), timeout=10)
        assert front.idle.closed == {"box": 2}
        for oldest in clients[:2]:  # closed by the front, nothing read: the client sees its end
            assert await asyncio.wait_for(loop.sock_recv(oldest, 10), scaled(10)) == b""
        await loop.sock_sendall(clients[4], b"hello")  # the newest speaks: out of the bound, served as before
        await eventually_async(lambda: held(2), timeout=10)

        async def handed_off() -> bool:
            assert handed == [b"hello"]
            return True

        await eventually_async(handed_off, timeout=10)  # not TLS: handed off at once, its bytes unread
        record = reporter.reported[0]  # at once; the second close within the second, at its end

        async def both_recorded() -> bool:
            assert "(2 in all)" in reporter.reported[-1].verdict.evidence, reporter.reported
            return True

        await eventually_async(both_recorded, timeout=10)
        assert len(reporter.reported) == 2
        assert all(r.verdict.reason is Reason.IDLE_LIMIT for r in reporter.reported)
        assert record.verdict.action is Enforcement.BLOCK and record.sandbox == "box"
        assert record.verdict.evidence.startswith("1 idle connections closed (1 in all)")
    finally:
        serving.cancel()
        for client in clients:
            client.close()
