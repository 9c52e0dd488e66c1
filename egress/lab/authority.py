"""The lab's DNS authority for the zone ``lab.``: what it answers (`answer`, pure) and how it listens (UDP, TCP).

Answers: A/AAAA for every lab name (`topology.address_records`) with TTL `topology.TTL`; under ``t.lab``
(the tunnel zone) any name exists and TXT and NULL carry data derived from the question, as a DNS tunnel's
server would; NS and SOA at the apex; NXDOMAIN for other names in the zone; REFUSED outside it (it is an
authority, not a resolver). The DoH endpoint (`egress.lab.httpd`) answers with the same function.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import struct

from egress.detect import dns
from egress.detect.dns import AAAA, NS, NULL, SOA, TXT, A, Question, Record
from egress.lab.topology import TTL, TUNNEL_ZONE, ZONE, address_records

IDLE = 30.0


def _in(name: str, zone: str) -> bool:
    return name == zone or name.endswith("." + zone)


def _records(question: Question) -> tuple[Record, ...] | None:
    """Records for the question; empty for a name that exists without that type; None for no such name. The owner
    name is the question's, byte for byte (case kept, as resolvers that randomise it expect)."""
    name, owner, qtype = question.name, question.labels, question.qtype
    if name == ZONE:
        apex: dict[int, bytes] = {
            NS: dns.encode_name("ns.lab"),
            SOA: dns.encode_name("ns.lab")
            + dns.encode_name("hostmaster.lab")
            + struct.pack("!5I", 1, 3600, 600, 86400, TTL),
        }
        return (Record(owner, qtype, TTL, apex[qtype]),) if qtype in apex else ()
    addresses = address_records(name)
    if addresses is None:
        return None
    v4, v6 = addresses
    if qtype == A:
        return (Record(owner, A, TTL, ipaddress.IPv4Address(v4).packed),)
    if qtype == AAAA:
        return (Record(owner, AAAA, TTL, ipaddress.IPv6Address(v6).packed),)
    if _in(name, TUNNEL_ZONE):
        reply = hashlib.sha256(name.encode()).digest()
        if qtype == TXT:
            return (Record(owner, TXT, 0, dns.txt_data([reply.hex().encode(), reply.hex()[:32].encode()])),)
        if qtype == NULL:
            return (Record(owner, NULL, 0, reply * 4),)
    return ()


def answer(query: bytes) -> bytes | None:
    """The authority's response to one DNS message, or None for bytes that are not a query worth answering."""
    try:
        message = dns.parse(query)
    except dns.DnsError:
        return None
    if message.is_response:
        return None
    if message.opcode != 0:
        return dns.build_response(message, dns.NOTIMP, authoritative=True)
    if message.qdcount != 1:
        return dns.build_response(message, dns.FORMERR, authoritative=True)
    if not _in(message.questions[0].name, ZONE):
        return dns.build_response(message, dns.REFUSED)
    records = _records(message.questions[0])
    if records is None:
        return dns.build_response(message, dns.NXDOMAIN, authoritative=True)
    return dns.build_response(message, dns.NOERROR, records, authoritative=True)


async def serve_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """DNS over TCP: length-prefixed messages until the client closes or idles (RFC 7766)."""
    with contextlib.suppress(asyncio.IncompleteReadError, TimeoutError, ConnectionError):
        while True:
            (length,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), IDLE))
            response = answer(await asyncio.wait_for(reader.readexactly(length), IDLE))
            if response is None:
                break
            writer.write(dns.tcp_frame(response))
            await writer.drain()
