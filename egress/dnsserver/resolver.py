"""The gateway's DNS resolver: answers sandboxes only for allowlisted names, binds answered addresses to names.

For each query from a sandbox: find the sandbox by source address, run the DNS tunnel and name-list detectors
(per sandbox state), decide (`egress.decide.decide_dns`), then either refuse (REFUSED; NXDOMAIN for the DoH
canary ``use-application-dns.net``) or forward to the upstream resolver. Addresses in an upstream answer are
bound to the question's name for that sandbox (`Bindings`, which the proxy checks) and offered to the kernel's
allow sets through ``on_answer``. Every decision (allowed or not) is reported as a `DecidedFlow`.

UDP and TCP on one port; a truncated UDP answer from upstream is retried over TCP.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from egress.decide import Enforcement, Verdict, decide_dns, decide_unknown_source
from egress.decisions import DecidedFlow, Reporter
from egress.detect import dns
from egress.detect.dns_tunnel import DnsTunnelLimits
from egress.detect.names import NameLists
from egress.detect.registry import DnsInspector
from egress.dnsserver.bindings import Bindings
from egress.policy.model import Policy, Sandbox

log = logging.getLogger(__name__)

UPSTREAM_TIMEOUT = 3.0
AnswerSink = Callable[[str, list[tuple[str, int]]], None]
"""Called with (sandbox name, [(address, ttl)]) for every allowed answer."""


def tunnel_limits(sandbox: Sandbox) -> DnsTunnelLimits:
    limits = sandbox.dns
    return DnsTunnelLimits(
        exfil_chars=limits.exfil_chars,
        encoded_subdomains=limits.encoded_subdomains,
        odd_subdomains=limits.odd_subdomains,
        rare_type_subdomains=limits.rare_type_subdomains,
        volume_subdomains=limits.volume_subdomains,
    )


@dataclass(frozen=True, slots=True)
class Upstream:
    host: str
    port: int = 53


class Resolver:
    """The sans-socket core: `answer` takes a query and its client and returns the bytes to send back."""

    def __init__(
        self,
        policy: Policy,
        upstream: Upstream,
        bindings: Bindings,
        reporter: Reporter,
        lists: NameLists,
        on_answer: AnswerSink | None = None,
        listen_address: str = "",
        listen_port: int = 53,
    ) -> None:
        self.policy = policy
        self.upstream = upstream
        self.bindings = bindings
        self.reporter = reporter
        self.lists = lists
        self.on_answer = on_answer
        self.listen_address = listen_address
        self.listen_port = listen_port
        self._inspectors: dict[str, DnsInspector] = {}
        self.answered = 0
        self.refused = 0

    def reload(self, policy: Policy) -> None:
        """Swap in a new policy (per-sandbox tunnel state starts afresh)."""
        self.policy = policy
        self._inspectors.clear()

    def _inspector(self, sandbox: Sandbox) -> DnsInspector:
        inspector = self._inspectors.get(sandbox.name)
        if inspector is None:
            inspector = self._inspectors[sandbox.name] = DnsInspector(self.lists, tunnel_limits(sandbox))
        return inspector

    async def answer(self, query: bytes, client: tuple[str, int], transport: str) -> bytes | None:
        try:
            parsed = dns.parse(query)
        except dns.DnsError:
            return dns.reply(query, dns.FORMERR, recursion_available=True)
        if parsed.is_response or not parsed.questions:
            return _reply(parsed, dns.FORMERR)
        qname = parsed.questions[0].name
        source = client[0].split("%", 1)[0]
        try:
            address = ipaddress.ip_address(source)
        except ValueError:
            return _reply(parsed, dns.REFUSED)
        sandbox = self.policy.sandbox_for(address)
        if sandbox is None:
            self._report(client, transport, qname, decide_unknown_source(source), "")
            self.refused += 1
            return _reply(parsed, dns.REFUSED)
        finding = self._inspector(sandbox).observe_message(source, parsed)
        if len(qname) > sandbox.dns.max_name_length and finding is None:
            finding = self._inspector(sandbox).long_name(qname)
        verdict = decide_dns(sandbox, qname, finding)
        self._report(client, transport, qname, verdict, sandbox.name)
        if verdict.action is Enforcement.BLOCK:
            self.refused += 1
            rcode = dns.NXDOMAIN if verdict.reason is not None and verdict.reason.value == "doh-canary" else dns.REFUSED
            return _reply(parsed, rcode)
        response = await self._forward(query)
        if response is None:
            return _reply(parsed, dns.SERVFAIL)
        upstream_answer = dns.parse_partial(response)
        found = dns.addresses(upstream_answer) if upstream_answer is not None else []
        if found:
            self.bindings.bind(sandbox.name, qname, found)
            if self.on_answer is not None:
                self.on_answer(sandbox.name, found)
        self.answered += 1
        return response

    def _report(self, client: tuple[str, int], transport: str, qname: str, verdict: Verdict, sandbox: str) -> None:
        attempt = DecidedFlow(
            ts=time.time(),
            sandbox=sandbox,
            src=client[0],
            sport=client[1],
            dst=self.listen_address,
            dport=53,
            transport=transport,
            host=qname,
            verdict=verdict,
        )
        self.reporter.report(attempt)

    async def _forward(self, query: bytes) -> bytes | None:
        try:
            response = await asyncio.wait_for(_udp_query(self.upstream, query), UPSTREAM_TIMEOUT)
            head = dns.parse_partial(response) if response is not None else None
            if head is not None and head.tc:
                response = await asyncio.wait_for(_tcp_query(self.upstream, query), UPSTREAM_TIMEOUT)
        except (TimeoutError, OSError) as exc:
            log.warning("upstream %s:%d failed: %s", self.upstream.host, self.upstream.port, exc)
            return None
        return response


def _reply(query: dns.Message, rcode: int) -> bytes:
    """The resolver's answer without records: the question echoed, recursion available."""
    return dns.build_response(query, rcode, recursion_available=True)


class _UpstreamProtocol(asyncio.DatagramProtocol):
    def __init__(self, query_id: bytes) -> None:
        self.query_id = query_id
        self.result: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if data[:2] == self.query_id and not self.result.done():
            self.result.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.result.done():
            self.result.set_exception(exc)


async def _udp_query(upstream: Upstream, query: bytes) -> bytes | None:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _UpstreamProtocol(query[:2]), remote_addr=(upstream.host, upstream.port)
    )
    try:
        transport.sendto(query)
        return await protocol.result
    finally:
        transport.close()


async def _tcp_query(upstream: Upstream, query: bytes) -> bytes | None:
    reader, writer = await asyncio.open_connection(upstream.host, upstream.port)
    try:
        writer.write(dns.tcp_frame(query))
        await writer.drain()
        length = struct.unpack(">H", await reader.readexactly(2))[0]
        return await reader.readexactly(length)
    finally:
        writer.close()


class _ServerProtocol(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        task = asyncio.get_running_loop().create_task(self._answer(data, (str(addr[0]), int(addr[1]))))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            response = await self.resolver.answer(data, addr, "udp")
        except Exception:  # one bad query must never stop the resolver
            log.exception("query from %s failed", addr[0])
            response = dns.reply(data, dns.SERVFAIL, recursion_available=True)
        if response is not None and self.transport is not None:
            self.transport.sendto(response, addr)


async def _serve_tcp(resolver: Resolver, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peer = writer.get_extra_info("peername")
    client = (str(peer[0]), int(peer[1]))
    try:
        while True:
            length = struct.unpack(">H", await asyncio.wait_for(reader.readexactly(2), 10.0))[0]
            query = await asyncio.wait_for(reader.readexactly(length), 10.0)
            response = await resolver.answer(query, client, "tcp")
            if response is None:
                break
            writer.write(dns.tcp_frame(response))
            await writer.drain()
    except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve(resolver: Resolver, hosts: list[str], port: int) -> list[object]:
    """Listen on UDP and TCP ``port`` on each of ``hosts``; returns the servers/transports to close."""
    loop = asyncio.get_running_loop()
    handles: list[object] = []
    for host in hosts:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # the IPv4 socket takes IPv4
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        transport, _ = await loop.create_datagram_endpoint(lambda: _ServerProtocol(resolver), sock=sock)
        handles.append(transport)
        server = await asyncio.start_server(lambda r, w: _serve_tcp(resolver, r, w), host, port)
        handles.append(server)
    return handles
