"""The resolver's TCP connections on loopback: a client that never reads is reset and recorded, what one connection
queues is bounded, and one sandbox's flood of pipelined queries does not hold another sandbox's answer."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import socket
import struct

from egress.decide import Enforcement, Reason
from egress.detect import dns
from egress.detect.names import NameLists
from egress.dnsserver.fair import FairShare
from egress.dnsserver.listen import tcp_handler
from egress.dnsserver.resolver import Resolver, Upstream
from egress.dnsserver.tcpbound import TcpBound
from egress.dnsserver.tcpserve import READ_AHEAD, STALLED_RULE, TcpLimits
from egress.policy.loader import parse_policy
from tests.dnsserver.test_resolver import Recorded
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
    sources: [127.0.0.3/32]
    link_pins_sources: true
    allow:
      hosts: [allowed.lab]
"""
AGENT, BUILDER = "127.0.0.2", "127.0.0.3"


def _resolver(tmp_path: pathlib.Path, reporter: Recorded) -> Resolver:
    from egress.dnsserver.bindings import Bindings

    bindings = Bindings(tmp_path / "bindings.db")
    return Resolver(parse_policy(POLICY), Upstream("127.0.0.1", 9), bindings, reporter, NameLists([]))


async def _server(resolver: Resolver, share: FairShare, limits: TcpLimits) -> tuple[asyncio.Server, int]:
    bound = TcpBound(on_closed=resolver.tcp_closed)
    server = await asyncio.start_server(tcp_handler(resolver, bound, share, limits), "127.0.0.1", 0, limit=READ_AHEAD)
    return server, server.sockets[0].getsockname()[1]


def _flood(count: int, first: int = 0) -> bytes:
    return b"".join(dns.tcp_frame(dns.build_query((first + n) & 0xFFFF, "blocked.lab", dns.A)) for n in range(count))


def _pipelined(port: int, source: str, flood: bytes, receive_buffer: int | None = None) -> socket.socket:
    """A connection from ``source`` that has sent as much of ``flood`` as the kernel took at once (never read)."""
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))  # the kernel completes it; the loop accepts it later
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        sock.send(flood)
    return sock


def test_a_client_that_never_takes_its_answers_is_reset_and_recorded(tmp_path: pathlib.Path) -> None:
    """An agent pipelines thousands of queries and never reads: the handler's ``drain`` makes no progress, and
    after the stall timeout the connection is reset and recorded under its sandbox (was: held for good)."""
    reporter = Recorded()
    resolver = _resolver(tmp_path, reporter)
    limits = TcpLimits(stall_timeout=0.5, write_ahead=4096)

    async def scenario() -> bytes | Exception:
        server, port = await _server(resolver, FairShare(), limits)
        sock = _pipelined(port, AGENT, _flood(5000), receive_buffer=1024)

        ended: list[bytes | Exception] = []

        async def stalled() -> bool:
            assert resolver.tcp_stalled_closed == 1
            try:  # what the kernel holds is read, then the reset (once the loop closed the socket)
                while chunk := sock.recv(65536):
                    ended.append(chunk)
            except ConnectionResetError as error:
                ended.append(error)
            except BlockingIOError:
                pass
            assert ended and isinstance(ended[-1], ConnectionResetError)
            return True

        await eventually_async(stalled, timeout=30.0)
        sock.close()
        server.close()
        return ended[-1]

    try:
        ended = asyncio.run(scenario())
    finally:
        resolver.bindings.close()
    assert isinstance(ended, ConnectionResetError)
    stalls = [flow for flow in reporter.flows if flow.verdict.rule == STALLED_RULE]
    assert len(stalls) == 1
    verdict = stalls[0].verdict
    assert (stalls[0].sandbox, verdict.action, verdict.reason) == ("agent", Enforcement.BLOCK, Reason.IDLE_TIMEOUT)
    # what one connection queued is bounded: the answers the transport, the kernel and the client's small buffer
    # hold (each some 70 bytes), never the thousands it sent
    assert resolver.refused < 600, resolver.refused


def test_one_sandboxs_flood_of_pipelined_queries_does_not_hold_anothers_answer(tmp_path: pathlib.Path) -> None:
    """20 connections of ``agent`` with 300 pipelined queries each, all in the resolver's socket buffers before the
    loop runs, then one query of ``builder``: builder is answered while most of the flood still waits (was: after
    all 6,000, which one turn of the loop answered in a row)."""
    reporter = Recorded()
    resolver = _resolver(tmp_path, reporter)
    flooded = 20 * 300

    async def scenario() -> int:
        server, port = await _server(resolver, FairShare(), TcpLimits())
        agents = [_pipelined(port, AGENT, _flood(300, 300 * n)) for n in range(20)]
        builder = _pipelined(port, BUILDER, dns.tcp_frame(dns.build_query(4242, "blocked.lab", dns.A)))
        loop = asyncio.get_running_loop()
        head = await loop.sock_recv(builder, 2)
        assert len(head) == 2
        answered_by_then = resolver.refused  # builder's included
        body = await loop.sock_recv(builder, struct.unpack(">H", head)[0])
        assert dns.parse(body).id == 4242

        async def flood_answered() -> bool:
            assert resolver.refused == flooded + 1
            return True

        for sock in agents:  # the flood is answered too: its answers are read as they come
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        reading = [loop.create_task(_read_all(sock)) for sock in agents]
        await eventually_async(flood_answered, timeout=60.0)
        for task in reading:
            task.cancel()
        for sock in [*agents, builder]:
            sock.close()
        server.close()
        return answered_by_then

    try:
        answered_by_then = asyncio.run(scenario())
    finally:
        resolver.bindings.close()
    assert answered_by_then < flooded // 2, f"builder answered after {answered_by_then} of the agent's {flooded}"


async def _read_all(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    while await loop.sock_recv(sock, 65536):
        pass


def test_a_query_longer_than_the_read_ahead_is_still_read_whole(tmp_path: pathlib.Path) -> None:
    """The read-ahead bounds what waits unanswered, not the size of one query (up to 65,535 bytes)."""
    reporter = Recorded()
    resolver = _resolver(tmp_path, reporter)
    query = dns.build_query(7, "blocked.lab", dns.A)
    padded = query + b"\0" * (4 * READ_AHEAD)  # trailing bytes: malformed, answered with an error, not stuck

    async def scenario() -> int:
        server, port = await _server(resolver, FairShare(), TcpLimits())
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(AGENT, 0))
        writer.write(dns.tcp_frame(padded) + dns.tcp_frame(query))
        ids = []
        for _ in range(2):
            length = struct.unpack(">H", await reader.readexactly(2))[0]
            ids.append(dns.parse(await reader.readexactly(length)).id)
        writer.close()
        server.close()
        return len(ids)

    try:
        assert asyncio.run(scenario()) == 2
    finally:
        resolver.bindings.close()
