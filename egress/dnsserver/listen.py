"""The resolver's sockets: UDP and TCP on one port, each query handed to `Resolver.answer`.

UDP is read by hand rather than through asyncio's datagram transport, for three reasons a burst of queries showed
(2,000 sent at once, 374 neither answered nor recorded):

- the receive buffer is sized (`RECEIVE_BUFFER`; ``SO_RCVBUFFORCE`` as root goes past ``net.core.rmem_max``,
  else ``SO_RCVBUF`` gets what the sysctl allows, and the size obtained is logged);
- each wake-up drains up to `BATCH` datagrams, so the buffer empties faster than a burst fills it, and answers
  each at once when it needs no upstream exchange (`Resolver.answer_now`: refusals and cached answers), so only a
  query that waits on the upstream costs a task;
- the fast path's merged allowed decisions (`egress.dnsserver.fast.AllowedBatch`) are reported `REPORT_AFTER`
  seconds after the first of them, whatever the reads in between: at a modest rate a read holds one or two
  datagrams, and a decision line per read made each answer cost twice what it costs under saturation;
- ``SO_RXQ_OVFL`` (Linux, socket(7)) makes the kernel attach to each datagram the count of datagrams it dropped
  on this socket so far; a rise is reported to the resolver (`Resolver.kernel_dropped`), which records it as
  ``dns-dropped`` (one decision with its count, naming the socket's sandbox), so what the kernel drops is never
  lost silently; a flood that stops brings no later datagram to carry the count, so each socket also reads it with
  ``SO_MEMINFO`` every `DROPS_EVERY` seconds and at its close.

Each address has one such socket per sandbox (`egress.dnsserver.udpshare`: one ``SO_REUSEPORT`` group, the kernel
steering each datagram to its sandbox's socket by source address), so a sandbox's flood fills its own queue only.

TCP connections are bounded per sandbox and in all (`egress.dnsserver.tcpbound`): the resolver shares the
supervisor's descriptors with what records blocked attempts. Each connection is served by
`egress.dnsserver.tcpserve` (read, read-ahead, unread answers and stalls bounded), its queries within its
sandbox's share of each loop turn (`egress.dnsserver.fair`, one `FairShare` for all the resolver's connections);
`tcp_handler` sizes each one's send buffer first.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import resource
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Final

from egress.detect import dns
from egress.dnsserver.fair import FairShare
from egress.dnsserver.resolver import Pending, Resolver
from egress.dnsserver.tcpbound import TCP_LIMIT, TCP_PER_SANDBOX, TcpBound
from egress.dnsserver.tcpserve import READ_AHEAD, TcpLimits, serve_tcp

log = logging.getLogger(__name__)

RECEIVE_BUFFER: Final = 8 << 20
"""Bytes asked for the UDP receive buffer: some 30,000 small queries (the kernel counts its overhead too)."""
BATCH: Final = 256
"""Datagrams a lone socket reads per wake-up at most, so a burst does not starve the tasks that answer (the
sockets of `egress.dnsserver.udpshare` read its own `TURN_BUDGET` each)."""
REPORT_AFTER: Final = 0.1
"""Seconds the fast path's merged allowed decisions wait before they are reported (`Resolver.flush_reports`)."""
SO_RXQ_OVFL: Final = getattr(socket, "SO_RXQ_OVFL", 40)
"""Linux asm-generic/socket.h; Python does not name it."""
SO_RCVBUFFORCE: Final = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_ATTACH_REUSEPORT_CBPF: Final = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)
"""asm-generic/socket.h; Python does not name it."""
SO_MEMINFO: Final = getattr(socket, "SO_MEMINFO", 55)
"""asm-generic/socket.h: the socket's memory counters (linux/sock_diag.h ``SK_MEMINFO_*``), its drops among them."""
_SK_MEMINFO_DROPS: Final = 8
_SK_MEMINFO_VARS: Final = 9
DROPS_EVERY: Final = 1.0
"""Seconds between two looks at a socket's drop counter without a datagram (`UdpServer`): a flood that stops has
its last drops recorded then, not at its sandbox's next query."""
_ANCILLARY: Final = socket.CMSG_SPACE(4)
_MAX_DATAGRAM: Final = 65535


def size_receive_buffer(sock: socket.socket, size: int = RECEIVE_BUFFER) -> int:
    """Ask for a receive buffer of ``size`` bytes (forced past the sysctl when allowed); return what was given."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:  # not root (CAP_NET_ADMIN): the sysctl net.core.rmem_max caps it
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def open_udp(host: str, port: int, buffer: int = RECEIVE_BUFFER) -> tuple[socket.socket, int]:
    """A UDP socket bound to ``host``:``port`` in the port's ``SO_REUSEPORT`` group (`egress.dnsserver.udpshare`
    binds one per sandbox), its receive buffer sized; and the size obtained."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # the IPv4 sockets take IPv4
        # SO_REUSEPORT alone: the group's sockets share the port, and only a socket of the same user with
        # SO_REUSEPORT joins; with SO_REUSEADDR any process could bind it with SO_REUSEADDR and take the datagrams
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        size = size_receive_buffer(sock, buffer)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock, size


def attach_steering(sock: socket.socket, code: bytes) -> None:
    """Make ``code`` (`egress.dnsserver.steer.encode`) the program of ``sock``'s reuseport group: which of the
    group's sockets each datagram reaches (``OSError`` when the kernel refuses it)."""
    program = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HP", len(code) // 8, ctypes.addressof(program))  # struct sock_fprog; the kernel copies
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def dropped_so_far(ancillary: list[tuple[int, int, bytes]]) -> int | None:
    """The kernel's drop counter from a datagram's ancillary data, if it carried one."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL and len(data) >= 4:
            return int(struct.unpack("=I", data[:4])[0])
    return None


def dropped_now(sock: socket.socket) -> int:
    """The kernel's drop counter of ``sock`` now (``SO_MEMINFO``; the counter ``SO_RXQ_OVFL`` attaches)."""
    data = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * _SK_MEMINFO_VARS)
    return int(struct.unpack_from("=I", data, 4 * _SK_MEMINFO_DROPS)[0])


class UdpServer:
    """One UDP socket: drains it in batches, answers each query in its own task, reports kernel drops."""

    def __init__(
        self,
        resolver: Resolver,
        sock: socket.socket,
        sandbox: str = "",
        budget: int = BATCH,
        drops_every: float = DROPS_EVERY,
    ) -> None:
        """``sandbox``: whose datagrams the kernel steers to this socket (``""``: any source), named in the
        records of what it drops; ``budget``: datagrams read per wake-up at most; ``drops_every``: seconds between
        two looks at the drop counter when no datagram brought it (the loop's clock; 0: never)."""
        if budget < 1:
            raise ValueError(f"a UDP socket's budget per turn must be at least 1 (got {budget})")
        self.resolver = resolver
        self.sock = sock
        self.sandbox = sandbox
        self.budget = budget
        self.tasks: set[asyncio.Task[None]] = set()
        self.received = 0
        self._drops_seen = 0
        self._loop = asyncio.get_running_loop()
        self._report: asyncio.TimerHandle | None = None
        """When the fast path's merged decisions are reported (None: none wait)."""
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
        self._loop.add_reader(sock.fileno(), self._drain)
        self.drops_every = drops_every
        self._drops_timer: asyncio.TimerHandle | None = None
        if drops_every > 0:
            self._drops_timer = self._loop.call_later(drops_every, self._look_at_drops)

    def _look_at_drops(self) -> None:
        """The drop counter read without a datagram (a datagram carries it only once the kernel queues one): what
        the kernel dropped since the last report is recorded now."""
        self._drops_timer = None
        if self.sock.fileno() < 0:
            return
        try:
            self._dropped_so_far(dropped_now(self.sock))
        except OSError as exc:  # a kernel without SO_MEMINFO: the datagrams still carry the counter
            log.warning("drop counter of the resolver socket not read (%s): reported with the next datagram", exc)
            return
        self._drops_timer = self._loop.call_later(self.drops_every, self._look_at_drops)

    def _drain(self) -> None:
        try:
            self._read()
        finally:  # the fast path's allowed decisions merged so far, reported within `REPORT_AFTER`
            if self._report is None and self.resolver.batch.pending:
                self._report = self._loop.call_later(REPORT_AFTER, self._flush)

    def _flush(self) -> None:
        self._report = None
        self.resolver.flush_reports()

    def _read(self) -> None:
        sock, answer_now = self.sock, self.resolver.answer_now  # a lookup less per datagram: this loop is the hot path
        for _ in range(self.budget):
            try:
                data, ancillary, _flags, addr = sock.recvmsg(_MAX_DATAGRAM, _ANCILLARY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. an ICMP error queued on the socket: the next read goes on
                log.debug("receive on the resolver socket: %s", exc)
                continue
            self.received += 1
            if ancillary:  # the kernel attaches its drop count only once it has dropped a datagram (socket(7))
                self._dropped(ancillary)
            client = (addr[0], addr[1])
            try:
                result = answer_now(data, client, "udp")
            except Exception:  # one bad query must never stop the resolver; nothing is forwarded after an error
                log.exception("query from %s failed", client[0])
                result = dns.reply(data, dns.SERVFAIL, recursion_available=True)
            if isinstance(result, Pending):  # the upstream must be asked: that waits in a task of its own
                task = self._loop.create_task(self._finish(data, result, addr))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            elif result is not None:
                try:  # noqa: SIM105 (a context manager per datagram costs more than the send's own Python)
                    sock.sendto(result, addr)
                except OSError:  # a full send buffer or a vanished client: the client retries
                    pass

    def _dropped(self, ancillary: list[tuple[int, int, bytes]]) -> None:
        dropped = dropped_so_far(ancillary)
        if dropped is not None:
            self._dropped_so_far(dropped)

    def _dropped_so_far(self, dropped: int) -> None:
        """The kernel says it dropped ``dropped`` datagrams on this socket so far: record the rise (a datagram's
        count may be older than the one the timer read: never recorded twice)."""
        if dropped > self._drops_seen:
            self.resolver.kernel_dropped(dropped - self._drops_seen, self.sandbox)
            self._drops_seen = dropped

    async def _finish(self, data: bytes, pending: Pending, addr: tuple[object, ...]) -> None:
        try:
            response: bytes | None = await self.resolver.finish(pending)
        except Exception:  # as in `_drain`: SERVFAIL, nothing forwarded
            log.exception("query from %s failed", pending.client[0])
            response = dns.reply(data, dns.SERVFAIL, recursion_available=True)
        self._send(response, addr)

    def _send(self, response: bytes | None, addr: tuple[object, ...]) -> None:
        if response is not None:
            with contextlib.suppress(OSError):  # a full send buffer or a vanished client: the client retries
                self.sock.sendto(response, addr)

    def pause(self) -> None:
        """Stop reading the socket (kept open: queries queue up unanswered), as a stuck resolver would."""
        if self.sock.fileno() >= 0:
            self._loop.remove_reader(self.sock.fileno())

    def get_extra_info(self, name: str) -> object:
        """As asyncio transports do: ``sockname`` is the bound address."""
        return self.sock.getsockname() if name == "sockname" else None

    def close(self) -> None:
        if self._report is not None:  # what was merged is reported now, not lost
            self._report.cancel()
            self._flush()
        if self._drops_timer is not None:
            self._drops_timer.cancel()
            self._drops_timer = None
        if self.sock.fileno() >= 0:
            with contextlib.suppress(OSError):  # what it dropped since the last look, recorded before it closes
                self._dropped_so_far(dropped_now(self.sock))
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()


def tcp_handler(
    resolver: Resolver, bound: TcpBound, share: FairShare, limits: TcpLimits | None = None
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """The handler of the resolver's TCP connections (``asyncio.start_server``'s): each socket's send buffer sized
    to the answers not taken that the transport may hold (so the kernel's part of them is bounded too, not
    autotuned to megabytes), then the connection served by `egress.dnsserver.tcpserve.serve_tcp`."""
    limits = limits or TcpLimits()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, limits.write_ahead)
        await serve_tcp(resolver, bound, share, reader, writer, limits)

    return handle


def tcp_bound(resolver: Resolver) -> TcpBound:
    """The resolver's TCP bound: `TCP_LIMIT` in all, or a quarter of a lower descriptor limit (the supervisor's
    other sockets, files and children need the rest)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    limit = TCP_LIMIT if soft == resource.RLIM_INFINITY else max(1, min(TCP_LIMIT, soft // 4))
    return TcpBound(limit, TCP_PER_SANDBOX, resolver.tcp_closed)


async def serve(resolver: Resolver, hosts: list[str], port: int) -> list[object]:
    """Listen on UDP and TCP ``port`` on each of ``hosts``; returns what to close (`UdpShare`, asyncio servers),
    the UDP sockets of each host first (`egress.dnsserver.udpshare.UdpShare`: one per sandbox)."""
    from egress.dnsserver.udpshare import UdpShare  # imported here: udpshare builds on this module's UdpServer

    handles: list[object] = []
    bound = tcp_bound(resolver)
    share = FairShare()
    log.info("resolver TCP: at most %d connections, %d per sandbox", bound.limit, bound.per_sandbox)
    try:
        for host in hosts:
            handles.append(UdpShare(resolver, host, port))
            server = await asyncio.start_server(tcp_handler(resolver, bound, share), host, port, limit=READ_AHEAD)
            handles.append(server)
    except BaseException:  # nothing half-open: the caller fails to start
        for handle in handles:
            handle.close()  # type: ignore[attr-defined]
        raise
    return handles
