"""The resolver's UDP socket on loopback: a burst is drained, and what the kernel dropped is counted and recorded."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pathlib
import socket
import struct
import termios

import pytest

from egress.decide import Reason
from egress.detect import dns
from egress.detect.names import NameLists
from egress.dnsserver import listen
from egress.dnsserver.bindings import Bindings
from egress.dnsserver.listen import SO_RXQ_OVFL, UdpServer, dropped_so_far, serve, size_receive_buffer
from egress.dnsserver.resolver import Resolver, Upstream
from egress.dnsserver.udpshare import UdpShare
from egress.policy.loader import parse_policy
from tests.dnsserver.test_resolver import Recorded
from tests.waiting import eventually_async

POLICY = """
version: 1
sandboxes:
  local:
    sources: [127.0.0.0/8]
    allow:
      hosts: [allowed.lab]
"""


def test_the_drop_counter_is_read_from_ancillary_data() -> None:
    assert dropped_so_far([(socket.SOL_SOCKET, SO_RXQ_OVFL, struct.pack("=I", 374))]) == 374
    assert dropped_so_far([(socket.SOL_SOCKET, SO_RXQ_OVFL + 1, b"\0\0\0\0")]) is None
    assert dropped_so_far([]) is None


def test_the_receive_buffer_is_sized() -> None:
    """As root the size is forced past net.core.rmem_max; otherwise the sysctl caps it."""
    cap = int(pathlib.Path("/proc/sys/net/core/rmem_max").read_text())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        got = size_receive_buffer(sock, 1 << 22)
    assert got >= (1 << 22 if os.geteuid() == 0 else min(1 << 22, cap))


def test_a_burst_past_the_buffer_is_answered_or_counted_never_lost_silently(tmp_path: pathlib.Path) -> None:
    """2,000 queries at once into a small buffer: every one is either answered or counted as a kernel drop."""
    sent = 2000
    reporter = Recorded()
    bindings = Bindings(tmp_path / "bindings.db")
    resolver = Resolver(parse_policy(POLICY), Upstream("127.0.0.1", 9), bindings, reporter, NameLists([]))

    async def scenario() -> tuple[int, int]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        size_receive_buffer(sock, 16384)  # small on purpose: the burst must overflow it
        server = UdpServer(resolver, sock)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.setblocking(False)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        address = sock.getsockname()
        for n in range(sent):  # the event loop does not run meanwhile: the kernel alone queues or drops
            client.sendto(dns.build_query(n & 0xFFFF, f"q{n}.blocked.lab", dns.A), address)
        answered: set[int] = set()

        def collect() -> None:
            while True:
                try:
                    answered.add(dns.parse(client.recv(4096)).id)
                except BlockingIOError:
                    return

        async def drained() -> bool:
            collect()
            pending = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]
            assert pending == 0 and not server.tasks and len(answered) == server.received
            return True

        await eventually_async(drained, timeout=30.0)
        # the kernel reports its count with the next datagram it queues: a late query carries it in
        client.sendto(dns.build_query(0xFFFF, "late.blocked.lab", dns.A), address)

        async def late_answered() -> bool:
            collect()
            assert 0xFFFF in answered
            return True

        await eventually_async(late_answered, timeout=30.0)
        server.close()
        client.close()
        return len(answered - {0xFFFF}), resolver.kernel_drops

    try:
        answered, dropped = asyncio.run(scenario())
    finally:
        bindings.close()
    assert dropped > 0, "the buffer was meant to overflow"
    assert answered + dropped == sent
    records = [flow for flow in reporter.flows if flow.verdict.reason is Reason.DNS_DROPPED]
    assert sum(record.count for record in records) == dropped  # one decision per read that saw a rise, its count
    assert len(records) <= dropped


def test_serve_listens_on_udp_and_tcp(tmp_path: pathlib.Path) -> None:
    bindings = Bindings(tmp_path / "bindings.db")
    resolver = Resolver(parse_policy(POLICY), Upstream("127.0.0.1", 9), bindings, Recorded(), NameLists([]))

    async def scenario() -> tuple[int, int]:
        handles = await serve(resolver, ["127.0.0.1"], 0)
        udp = handles[0]
        assert isinstance(udp, UdpShare)
        port = udp.port
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.setblocking(False)
            await loop.sock_sendto(client, dns.build_query(1, "blocked.lab", dns.A), ("127.0.0.1", port))
            udp_rcode = dns.parse(await loop.sock_recv(client, 4096)).rcode
        tcp_port = handles[1].sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port)
        writer.write(dns.tcp_frame(dns.build_query(2, "blocked.lab", dns.A)))
        length = struct.unpack(">H", await reader.readexactly(2))[0]
        tcp_rcode = dns.parse(await reader.readexactly(length)).rcode
        writer.close()
        for handle in handles:
            handle.close()  # type: ignore[attr-defined]
        return udp_rcode, tcp_rcode

    try:
        assert asyncio.run(scenario()) == (dns.REFUSED, dns.REFUSED)
    finally:
        bindings.close()


def _fast_resolver(tmp_path: pathlib.Path, reporter: Recorded) -> Resolver:
    from tests.dnsserver.test_fast import Answering
    from tests.dnsserver.test_resolver import POLICY as AGENT

    policy = parse_policy(AGENT.replace("sources: [10.203.1.0/24]", "sources: [10.203.1.0/24, 127.0.0.0/8]"))
    return Answering(policy, Upstream("192.0.2.53"), Bindings(tmp_path / "bindings.db"), reporter, NameLists([]))


async def _ask_in_turn(server: UdpServer, count: int) -> None:
    """``count`` queries for one name, each sent once the one before was answered (so each in a read of its own)."""
    loop = asyncio.get_running_loop()
    address = server.sock.getsockname()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.setblocking(False)
        for ident in range(count):
            await loop.sock_sendto(client, dns.build_query(ident, "allowed.lab", dns.A), address)
            assert dns.parse(await loop.sock_recv(client, 4096)).id == ident


def test_the_fast_paths_decisions_of_many_reads_are_reported_as_one_when_the_socket_closes(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reported `REPORT_AFTER` after the first of them (here: never by time), or at once when the socket closes."""
    monkeypatch.setattr(listen, "REPORT_AFTER", 3600.0)
    reporter = Recorded()
    resolver = _fast_resolver(tmp_path, reporter)

    async def scenario() -> list[int]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        server = UdpServer(resolver, sock)
        await _ask_in_turn(server, 4)  # the first takes the slow path and prepares the answer
        counts = [flow.count for flow in reporter.flows]
        server.close()
        return counts

    try:
        before_close = asyncio.run(scenario())
    finally:
        resolver.bindings.close()
    assert resolver.fast.hits == 3
    assert before_close == [1]
    assert [(flow.host, flow.count) for flow in reporter.flows] == [("allowed.lab", 1), ("allowed.lab", 3)]


def test_the_fast_paths_decisions_are_reported_after_a_moment_without_another_query(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listen, "REPORT_AFTER", 0.01)
    reporter = Recorded()
    resolver = _fast_resolver(tmp_path, reporter)

    async def scenario() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        server = UdpServer(resolver, sock)
        await _ask_in_turn(server, 3)

        async def reported() -> bool:
            assert sum(flow.count for flow in reporter.flows) == 3
            return True

        await eventually_async(reported, timeout=30.0)
        server.close()

    try:
        asyncio.run(scenario())
    finally:
        resolver.bindings.close()
    assert resolver.fast.hits == 2
