"""One TCP connection to the resolver: its queries read, answered and written, each step bounded (red team 7).

A connection is answered one query at a time, in order (RFC 7766 allows pipelining; the resolver reads the next
query once the answer before is written), and every step that waits on the client has a bound:

- **the next query**: its length and its bytes within `READ_TIMEOUT` each, or the connection ends (a client done
  asking: nothing is recorded);
- **the queries read ahead**: the stream stops reading the socket once twice `READ_AHEAD` bytes of queries wait in
  it unanswered (asyncio's ``limit``), so one connection queues at most some 200 queries in the resolver (the
  smallest frame is 17 bytes); past that the kernel's buffers fill and TCP's flow control stops the client;
- **the answers not read**: at most `WRITE_AHEAD` bytes wait in the transport (`egress.dnsserver.listen` sizes the
  socket's send buffer to it too), then the handler waits in ``drain``; a ``drain`` that does not end within
  `STALL_TIMEOUT` (the client took almost nothing in that time) ends the connection, reset, and is recorded as a
  block (`egress.dnsserver.resolver.Resolver.tcp_stalled`, rule `STALLED_RULE`). Red team 7's agent pipelined 2,500
  queries on each connection and never read: its handlers waited in ``drain`` for as long as the connection lived
  (no read timeout runs there), each holding a place in the bound of connections (`egress.dnsserver.tcpbound`);
- **the loop's time**: each query waits for its sandbox's share of the loop turn (`egress.dnsserver.fair`) before
  it is answered, so a flood of pipelined queries on many connections costs its own sandbox's latency.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Final, Protocol

from egress.detect import dns
from egress.dnsserver.fair import FairShare
from egress.dnsserver.tcpbound import Conn, TcpBound

READ_TIMEOUT: Final = 10.0
"""Seconds the next query (its length, then its bytes) is waited for."""
STALL_TIMEOUT: Final = 10.0
"""Seconds an answer waits for the client to take the ones before it (`drain`), as long as a read is waited for."""
READ_AHEAD: Final = 2048
"""The stream's limit: reading the socket pauses past twice this many bytes of queries not yet answered."""
WRITE_AHEAD: Final = 16384
"""Bytes of answers the client has not taken that the transport holds before the handler waits (`drain`); the
socket's send buffer is asked for as much (the kernel doubles it)."""
STALLED_RULE: Final = "dns-tcp-stalled"
"""The rule of the records of connections ended because their client did not take its answers."""


class Answerer(Protocol):
    """What a connection needs of the resolver (`egress.dnsserver.resolver.Resolver`)."""

    async def answer(self, query: bytes, client: tuple[str, int], transport: str) -> bytes | None: ...

    def sandbox_name(self, source: str) -> str: ...

    def tcp_stalled(self, conn: Conn, answered: int, waited: float) -> None: ...


class TcpLimits:
    """The bounds of `serve_tcp` (module constants by default; tests pass short ones)."""

    __slots__ = ("read_timeout", "stall_timeout", "write_ahead")

    def __init__(
        self, read_timeout: float = READ_TIMEOUT, stall_timeout: float = STALL_TIMEOUT, write_ahead: int = WRITE_AHEAD
    ) -> None:
        self.read_timeout = read_timeout
        self.stall_timeout = stall_timeout
        self.write_ahead = write_ahead


async def serve_tcp(
    resolver: Answerer,
    bound: TcpBound,
    share: FairShare,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    limits: TcpLimits | None = None,
) -> None:
    """Answer one connection's queries until it ends (see the module docstring)."""
    limits = limits or TcpLimits()
    peer = writer.get_extra_info("peername")
    client = (str(peer[0]), int(peer[1]))
    transport = writer.transport
    conn = Conn(resolver.sandbox_name(client[0]), client, transport.abort)
    if not bound.open(conn):
        return
    transport.set_write_buffer_limits(high=limits.write_ahead)
    answered = 0
    try:
        while True:
            head = await asyncio.wait_for(reader.readexactly(2), limits.read_timeout)
            length = struct.unpack(">H", head)[0]
            query = await asyncio.wait_for(reader.readexactly(length), limits.read_timeout)
            bound.busy(conn)
            turn = share.take(conn.sandbox)
            if turn is not None:  # the sandbox spent its share of this turn: the loop runs the others first
                await turn
                if transport.is_closing():  # closed meanwhile (the bound): nothing to answer, nothing to decide
                    break
            response = await resolver.answer(query, client, "tcp")
            if response is None:
                break
            writer.write(dns.tcp_frame(response))
            answered += 1
            try:
                await asyncio.wait_for(writer.drain(), limits.stall_timeout)
            except TimeoutError:  # the client does not take its answers: reset, recorded (fails closed: no answer)
                transport.abort()
                resolver.tcp_stalled(conn, answered, limits.stall_timeout)
                return
            bound.idle(conn)
    except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
        pass
    finally:
        bound.release(conn)
        writer.close()
