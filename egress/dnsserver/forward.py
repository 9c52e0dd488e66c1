"""What the resolver sends upstream and back to the client, rebuilt from what it judged, and the upstream exchange.

The query forwarded upstream is never the client's bytes: it is built from the one judged question (its hostname,
lowercased: letter case can carry bits too), a fresh id, the client's RD and CD flags and, when the client used
EDNS, a fresh OPT record without options (options such as padding, cookies or client subnet could carry data).
Nothing else of the client's message (authority or additional records, other flags) leaves the gateway.

The response to the client is rebuilt too, from the upstream records the resolver kept: the client's id and
question (its letter case, for clients that check it), the upstream rcode, and an OPT of our own when the client
sent one. A response larger than the client can take over UDP is sent truncated (TC), so it retries over TCP.

A refusal (`refusal`) to a client that sent EDNS carries an Extended DNS Error (RFC 8914): an info-code and a
short text naming the reason and the rule, so a harness can show its agent why (clients without EDNS get the plain
rcode: an OPT must not be sent to them, RFC 6891 §7).
"""

from __future__ import annotations

import asyncio
import secrets
import struct
from dataclasses import dataclass
from typing import Final

from egress.detect import dns

UDP_PAYLOAD: Final = 1232
"""EDNS UDP payload size we advertise upstream and to clients (DNS Flag Day 2020: no IP fragmentation)."""
PLAIN_UDP_LIMIT: Final = 512
"""A client without EDNS takes at most this over UDP (RFC 1035 4.2.1)."""
_DO: Final = 0x8000
"""The DNSSEC OK bit in an OPT record's TTL field (RFC 3225)."""
_CD, _AD = 0x0010, 0x0020
_TCP_LIMIT: Final = 0xFFFF


@dataclass(frozen=True, slots=True)
class Upstream:
    host: str
    port: int = 53


EDE_OPTION: Final = 15
"""The EDNS option code of an Extended DNS Error (RFC 8914 §2)."""
EDE_BLOCKED: Final = 15
"""Info-code "Blocked" (RFC 8914 §4.16): the resolver's operator policy refuses the name (or its answer)."""
EDE_PROHIBITED: Final = 18
"""Info-code "Prohibited" (RFC 8914 §4.19): the client is not one this resolver serves (not a sandbox's)."""
EDE_TEXT_MAX: Final = 200
"""Bytes of EXTRA-TEXT at most: what a person reads, never a whole attacker-chosen name."""


def client_opt(query: dns.Message) -> dns.Record | None:
    """The client's OPT record, if it sent one (EDNS)."""
    return next((record for record in query.additionals if record.rtype == dns.OPT), None)


def _opt(dnssec_ok: bool, extended_rcode: int = 0) -> dns.Record:
    return dns.Record((), dns.OPT, (extended_rcode << 24) | (_DO if dnssec_ok else 0), b"", UDP_PAYLOAD)


def upstream_query(query: dns.Message, question: dns.Question, ident: int | None = None) -> bytes:
    """The query to forward: only ``question`` (lowercased), RD/CD from the client, a fresh OPT if it used EDNS."""
    opt = client_opt(query)
    lowered = dns.Question(tuple(label.lower() for label in question.labels), question.qtype, question.qclass)
    additionals = (_opt(bool(opt.ttl & _DO)),) if opt is not None else ()
    flags = query.flags & (dns.RD | _CD)
    ident = secrets.randbits(16) if ident is None else ident
    return dns.encode(dns.Message(ident, flags, (lowered,), additionals=additionals))


def matches(sent: bytes, response: dns.Message) -> bool:
    """Whether ``response`` answers the query ``sent``: same id, a response, the same single question."""
    asked = dns.parse(sent)
    if response.id != asked.id or not response.is_response or len(response.questions) != 1:
        return False
    mine, theirs = asked.questions[0], response.questions[0]
    same_name = tuple(label.lower() for label in theirs.labels) == mine.labels
    return same_name and (theirs.qtype, theirs.qclass) == (mine.qtype, mine.qclass)


def client_response(
    query: dns.Message,
    upstream: dns.Message,
    sections: tuple[tuple[dns.Record, ...], tuple[dns.Record, ...], tuple[dns.Record, ...]],
    transport: str,
) -> bytes:
    """The response to ``query`` carrying the kept upstream ``sections`` (answers, authorities, additionals)."""
    opt = client_opt(query)
    upstream_opt = client_opt(upstream)
    flags = dns.QR | dns.RA | (query.flags & (dns.RD | _CD)) | (upstream.flags & (_AD | 0xF))
    answers, authorities, additionals = sections
    extra = tuple(record for record in additionals if record.rtype != dns.OPT)
    if opt is not None:
        extended = upstream_opt.ttl >> 24 if upstream_opt is not None else 0
        extra = (*extra, _opt(bool(opt.ttl & _DO), extended))
    message = dns.Message(query.id, flags, query.questions, answers, authorities, extra)
    out = dns.encode(message)
    limit = _TCP_LIMIT if transport == "tcp" else max(PLAIN_UDP_LIMIT, opt.rclass if opt is not None else 0)
    if len(out) <= limit:
        return out
    truncated = dns.Message(query.id, flags | dns.TC, query.questions, additionals=extra[-1:] if opt else ())
    return dns.encode(truncated)


def refusal(query: dns.Message, rcode: int, info_code: int, text: str) -> bytes:
    """A response without records to ``query`` (its questions echoed, RD kept, RA set); when the client sent EDNS,
    with an OPT of ours carrying an Extended DNS Error: ``info_code`` and ``text`` (UTF-8, cut to `EDE_TEXT_MAX`
    bytes on a character boundary)."""
    opt = client_opt(query)
    if opt is None:
        return dns.build_response(query, rcode, recursion_available=True)
    body = text.encode("utf-8")[:EDE_TEXT_MAX].decode("utf-8", "ignore").encode("utf-8")
    option = struct.pack(">HHH", EDE_OPTION, 2 + len(body), info_code) + body
    record = dns.Record((), dns.OPT, opt.ttl & _DO, option, UDP_PAYLOAD)
    flags = dns.QR | dns.RA | (query.flags & (dns.OPCODE | dns.RD)) | (rcode & 0xF)
    return dns.encode(dns.Message(query.id, flags, query.questions, additionals=(record,)))


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


async def udp_query(upstream: Upstream, query: bytes) -> bytes | None:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _UpstreamProtocol(query[:2]), remote_addr=(upstream.host, upstream.port)
    )
    try:
        transport.sendto(query)
        return await protocol.result
    finally:
        transport.close()


async def tcp_query(upstream: Upstream, query: bytes) -> bytes | None:
    reader, writer = await asyncio.open_connection(upstream.host, upstream.port)
    try:
        writer.write(dns.tcp_frame(query))
        await writer.drain()
        length = struct.unpack(">H", await reader.readexactly(2))[0]
        return await reader.readexactly(length)
    finally:
        writer.close()
