"""The resolver's UDP share on loopback: a socket per sandbox (127.0.0.2 is ``agent``, 127.0.0.3 ``builder``), so
one sandbox's flood fills and overflows its own queue only, its drops are recorded as its own, each socket reads
its budget per turn, a reload steers a new sandbox, and whichever socket a datagram reaches it is judged by its
source."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import pathlib
import socket
import struct
import termios
from collections.abc import Awaitable, Callable, Iterator

import pytest

from egress.decide import Reason
from egress.detect import dns
from egress.detect.names import NameLists
from egress.dnsserver import steer, udpshare
from egress.dnsserver.bindings import Bindings
from egress.dnsserver.listen import UdpServer, dropped_now
from egress.dnsserver.resolver import Resolver, Upstream
from egress.dnsserver.udpshare import OUTSIDE, UdpShare
from egress.policy.loader import parse_policy
from tests.dnsserver.test_resolver import Recorded
from tests.ports import free_port
from tests.waiting import eventually_async

POLICY = """
version: 1
sandboxes:
  agent:
    sources: [127.0.0.2/32]
    link_pins_sources: true
    allow:
      hosts: [allowed.lab]
  builder:
    sources: [127.0.0.3/32, "fd00::3/128"]
    link_pins_sources: true
    allow:
      hosts: [allowed.lab]
"""
LATE = (
    POLICY
    + """
  late:
    sources: [127.0.0.4/32]
    link_pins_sources: true
    allow:
      hosts: [allowed.lab]
"""
)
WITHOUT_AGENT = LATE.replace(
    """  agent:
    sources: [127.0.0.2/32]
    link_pins_sources: true
    allow:
      hosts: [allowed.lab]
""",
    "",
)


@pytest.fixture
def resolver(tmp_path: pathlib.Path) -> Iterator[Resolver]:
    bindings = Bindings(tmp_path / "bindings.db")
    yield Resolver(parse_policy(POLICY), Upstream("127.0.0.1", 9), bindings, Recorded(), NameLists([]))
    bindings.close()


def _queued(sock: socket.socket) -> int:
    """The size of the datagram waiting first in ``sock``'s receive queue (0: none waits)."""
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0])


def _client(source: str) -> socket.socket:
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind((source, 0))
    client.setblocking(False)
    return client


def _reporter(resolver: Resolver) -> Recorded:
    assert isinstance(resolver.reporter, Recorded)
    return resolver.reporter


def test_each_sandbox_gets_a_socket_and_other_sources_the_first(resolver: Resolver) -> None:
    async def scenario() -> dict[str, int]:
        share = UdpShare(resolver, "127.0.0.1", 0)
        try:
            assert share.slots == [OUTSIDE, "agent", "builder"]
            await _refused_from_each(share.port)
            return {name: server.received for name, server in share.servers.items()}
        finally:
            share.close()

    assert asyncio.run(scenario()) == {OUTSIDE: 2, "agent": 1, "builder": 1}
    assert [flow.sandbox for flow in _reporter(resolver).flows] == ["", "agent", "builder", ""]


async def _until(check: Callable[[], Awaitable[bool]]) -> None:
    """`eventually_async` of a check that raises `BlockingIOError` until its datagram is there."""

    async def attempt() -> bool:
        try:
            return await check()
        except BlockingIOError:
            raise AssertionError("no answer yet") from None

    await eventually_async(attempt)


async def _refused_from_each(port: int) -> None:
    """A query for a name no rule allows from each of the sources the tests use (two sandboxes', the resolver's own
    and one in no sandbox), each awaited until its refusal comes back."""
    for source in ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.9"):
        with _client(source) as client:
            client.sendto(dns.build_query(1, "blocked.lab", dns.A), ("127.0.0.1", port))

            async def answered(client: socket.socket = client) -> bool:
                return dns.parse(client.recv(4096)).rcode == dns.REFUSED

            await _until(answered)


def test_one_sandboxs_flood_fills_its_own_queue_and_anothers_query_is_answered(resolver: Resolver) -> None:
    """The event loop does not run while the agent pours 6,000 queries into a 256 KiB buffer: the kernel queues
    hundreds and drops the rest in the agent's socket; builder's query sent after them waits in its own socket,
    alone, and is read in the first turn, after at most one budget of the agent's; the agent's drops are recorded
    as the agent's."""
    poured = 6000

    async def scenario() -> tuple[int, int, int]:
        share = UdpShare(resolver, "127.0.0.1", 0, buffer=1 << 18)
        agent_then: list[int] = []
        builder_server = share.servers["builder"]
        builder_read = builder_server._read

        def read() -> None:  # what the agent's socket had been read when builder's is
            agent_then.append(share.servers["agent"].received)
            builder_read()

        builder_server._read = read  # type: ignore[method-assign]
        try:
            with _client("127.0.0.2") as agent, _client("127.0.0.3") as builder:
                for n in range(poured):
                    query = dns.build_query(n & 0xFFFF, f"q{n}.blocked.lab", dns.A)
                    with contextlib.suppress(BlockingIOError):  # the client's own send buffer: the kernel's queue
                        agent.sendto(query, ("127.0.0.1", share.port))
                builder.sendto(dns.build_query(7, "blocked.lab", dns.A), ("127.0.0.1", share.port))
                assert _queued(share.servers["agent"].sock) > 0 and _queued(share.servers["builder"].sock) > 0
                got: list[int] = []

                async def answered() -> bool:
                    got.append(dns.parse(builder.recv(4096)).id)
                    return True

                await _until(answered)
                assert got == [7]

                async def drained() -> bool:
                    assert _queued(share.servers["agent"].sock) == 0 and not share.servers["agent"].tasks
                    return True

                await _until(drained)
                # the kernel reports its drop count with the next datagram it queues: a late query carries it in
                agent.sendto(dns.build_query(0xFFFF, "late.blocked.lab", dns.A), ("127.0.0.1", share.port))

                async def late_read() -> bool:
                    assert share.servers["agent"].received == agent_queued_read + 1
                    return True

                agent_queued_read = share.servers["agent"].received
                await _until(late_read)
                return agent_then[0], agent_queued_read, share.servers["builder"].received
        finally:
            share.close()

    agent_before_builder, agent_read, builder_read = asyncio.run(scenario())
    assert builder_read == 1
    assert agent_before_builder <= udpshare.TURN_BUDGET  # builder waited one budget of the agent's at most
    drops = [flow for flow in _reporter(resolver).flows if flow.verdict.reason is Reason.DNS_DROPPED]
    assert drops, "the agent's buffer was meant to overflow"
    assert agent_read > 8 * udpshare.TURN_BUDGET  # builder's query did not wait behind the agent's queue
    assert {flow.sandbox for flow in drops} == {"agent"}
    assert agent_read + sum(flow.count for flow in drops) == poured  # each answered or counted, never lost silently
    assert resolver.kernel_drops_by == {"agent": poured - agent_read}


def test_a_socket_reads_its_budget_per_turn(resolver: Resolver) -> None:
    async def scenario() -> list[int]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        server = UdpServer(resolver, sock, sandbox="agent", budget=3)
        server.pause()  # the loop does not read it: each `_drain` below is one turn's
        try:
            with _client("127.0.0.2") as agent:
                for n in range(7):
                    agent.sendto(dns.build_query(n, "blocked.lab", dns.A), sock.getsockname())
            seen = []
            for _ in range(4):
                server._drain()
                seen.append(server.received)
            return seen
        finally:
            server.close()

    assert asyncio.run(scenario()) == [3, 6, 7, 7]
    with pytest.raises(ValueError, match="at least 1"):
        UdpServer(resolver, socket.socket(socket.AF_INET, socket.SOCK_DGRAM), budget=0)


def test_a_reload_steers_a_new_sandbox_and_closes_a_removed_one_s_socket(resolver: Resolver) -> None:
    """The removed agent's socket is closed; the kernel moves the group's last socket (late's) into its place, and
    the program follows: the agent's old source reaches socket 0, late's and builder's their own."""

    async def scenario() -> tuple[list[str], dict[str, int], bool]:
        share = UdpShare(resolver, "127.0.0.1", 0)
        agent = share.servers["agent"]
        try:
            resolver.reload(parse_policy(LATE))
            resolver.reload(parse_policy(WITHOUT_AGENT))
            for source in ("127.0.0.2", "127.0.0.4", "127.0.0.3"):
                with _client(source) as client:
                    client.sendto(dns.build_query(1, "blocked.lab", dns.A), ("127.0.0.1", share.port))

                    async def answered(client: socket.socket = client) -> bool:
                        return dns.parse(client.recv(4096)).rcode == dns.REFUSED

                    await _until(answered)
            return (
                share.slots,
                {name: server.received for name, server in share.servers.items()},
                agent.sock.fileno() < 0,
            )
        finally:
            share.close()
            assert share.steer not in resolver.reloaded

    slots, received, closed = asyncio.run(scenario())
    assert closed
    assert slots == [OUTSIDE, "late", "builder"]
    assert received == {OUTSIDE: 1, "builder": 1, "late": 1}  # agent is gone: 127.0.0.2 is another source


def test_a_flood_that_stops_has_its_drops_recorded_without_another_query(resolver: Resolver) -> None:
    """The kernel attaches its drop counter to the datagrams it queues after a drop; a flood that stops brought no
    such datagram. The server looks at the counter every ``drops_every`` seconds (the loop's clock) and records the
    drops then, with the sandbox's name, though it read nothing."""

    async def scenario() -> tuple[int, int]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind(("127.0.0.1", 0))
        server = UdpServer(resolver, sock, sandbox="agent", drops_every=0.05)
        server.pause()  # a resolver behind the flood: nothing is read, the kernel queues a few and drops the rest
        try:
            with _client("127.0.0.2") as agent:
                for n in range(200):
                    with contextlib.suppress(BlockingIOError):
                        agent.sendto(dns.build_query(n, f"q{n}.blocked.lab", dns.A), sock.getsockname())
            dropped = dropped_now(sock)
            assert dropped > 0, "the 4 KiB buffer was meant to overflow"

            async def recorded() -> bool:
                assert resolver.kernel_drops_by.get("agent") == dropped
                return True

            await eventually_async(recorded)
            return dropped, server.received
        finally:
            server.close()

    dropped, read = asyncio.run(scenario())
    assert read == 0
    drops = [flow for flow in _reporter(resolver).flows if flow.verdict.reason is Reason.DNS_DROPPED]
    assert {flow.sandbox for flow in drops} == {"agent"} and sum(flow.count for flow in drops) == dropped


def test_no_other_socket_takes_the_port_and_one_of_the_same_user_that_joins_gets_nothing(resolver: Resolver) -> None:
    """Another process of the namespace binding the resolver's port: with ``SO_REUSEADDR`` (which the group's
    sockets used to set, so it bound, and, bound last, took every datagram) or plainly it is refused; with
    ``SO_REUSEPORT`` as the group's user it joins, at an index the program never returns."""

    async def scenario() -> tuple[list[str], int]:
        share = UdpShare(resolver, "127.0.0.1", 0)
        try:
            refused = []
            for options in ([socket.SO_REUSEADDR], []):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as intruder:
                    for option in options:
                        intruder.setsockopt(socket.SOL_SOCKET, option, 1)
                    try:
                        intruder.bind(("127.0.0.1", share.port))
                    except OSError as exc:
                        refused.append(errno.errorcode[exc.errno or 0])
                    else:
                        refused.append("bound")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as member:
                member.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                member.bind(("127.0.0.1", share.port))
                member.setblocking(False)
                await _refused_from_each(share.port)
                return refused, _queued(member)
        finally:
            share.close()

    refused, member_queued = asyncio.run(scenario())
    assert refused == ["EADDRINUSE", "EADDRINUSE"]
    assert member_queued == 0


@pytest.mark.root
def test_a_socket_of_another_user_cannot_join_the_group(resolver: Resolver) -> None:
    """The kernel lets only the group's user join an ``SO_REUSEPORT`` group: a process of another user is refused."""

    async def scenario() -> int:
        share = UdpShare(resolver, "127.0.0.1", 0)
        try:
            pid = os.fork()
            if pid == 0:  # the child: another user, both options set, binding the group's port
                code = 2
                try:
                    os.setgid(65534)
                    os.setuid(65534)
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
                        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                        other.bind(("127.0.0.1", share.port))
                    code = 0
                except OSError as exc:
                    code = 1 if exc.errno == errno.EADDRINUSE else 2
                finally:
                    os._exit(code)
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        finally:
            share.close()

    assert asyncio.run(scenario()) == 1  # refused: the address is in use


def test_whichever_socket_a_datagram_reaches_it_is_judged_by_its_source(
    resolver: Resolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A program that sends every source to the agent's socket (a stale or wrong steering): builder's query is
    still builder's decision."""
    monkeypatch.setattr(steer, "program", lambda routes, version: ([(steer.RET_K, 0, 0, 1)], []))

    async def scenario() -> int:
        share = UdpShare(resolver, "127.0.0.1", 0)
        try:
            with _client("127.0.0.3") as builder:
                builder.sendto(dns.build_query(1, "blocked.lab", dns.A), ("127.0.0.1", share.port))

                async def answered() -> bool:
                    return dns.parse(builder.recv(4096)).rcode == dns.REFUSED

                await _until(answered)
            return share.servers["agent"].received
        finally:
            share.close()

    assert asyncio.run(scenario()) == 1
    assert [(flow.sandbox, flow.src) for flow in _reporter(resolver).flows] == [("builder", "127.0.0.3")]


def test_a_program_the_kernel_refuses_stops_the_start_and_leaves_nothing_bound(
    resolver: Resolver, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(sock: socket.socket, code: bytes) -> None:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(udpshare, "attach_steering", refused)

    async def scenario() -> None:
        port = free_port(udp=True)
        with pytest.raises(OSError, match="Invalid argument"):
            UdpShare(resolver, "127.0.0.1", port)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:  # no socket of the share is left bound
            again.bind(("127.0.0.1", port))

    asyncio.run(scenario())


def test_a_program_the_kernel_refuses_on_a_reload_is_logged_and_queries_still_judged(
    resolver: Resolver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> dict[str, int]:
        share = UdpShare(resolver, "127.0.0.1", 0)
        try:

            def refused(sock: socket.socket, code: bytes) -> None:
                raise OSError(22, "Invalid argument")

            monkeypatch.setattr(udpshare, "attach_steering", refused)
            with caplog.at_level(logging.ERROR, logger="egress.dnsserver.udpshare"):
                resolver.reload(parse_policy(LATE))
            with _client("127.0.0.4") as late:  # the old program does not know it: the socket of other sources
                late.sendto(dns.build_query(1, "blocked.lab", dns.A), ("127.0.0.1", share.port))

                async def answered() -> bool:
                    return dns.parse(late.recv(4096)).rcode == dns.REFUSED

                await _until(answered)
            return {name: server.received for name, server in share.servers.items()}
        finally:
            share.close()

    received = asyncio.run(scenario())
    assert received[OUTSIDE] == 1 and received["late"] == 0
    assert "not steered to their own sockets" in caplog.text
    assert [(flow.sandbox, flow.verdict.reason) for flow in _reporter(resolver).flows][-1][0] == "late"


def test_ipv6_sockets_steer_the_ipv6_sources(resolver: Resolver) -> None:
    async def scenario() -> list[str]:
        try:
            share = UdpShare(resolver, "::1", 0)
        except OSError as exc:
            pytest.skip(f"no IPv6 loopback: {exc}")
        slots = share.slots
        share.close()
        return slots

    assert asyncio.run(scenario()) == [OUTSIDE, "builder"]  # only builder has an IPv6 source
