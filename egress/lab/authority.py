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

from egress.lab import dnswire
from egress.lab.dnswire import AAAA, NS, NULL, SOA, TXT, A, Record
from egress.lab.topology import TTL, TUNNEL_ZONE, ZONE, address_records

IDLE = 30.0


def _in(name: str, zone: str) -> bool:
    return name == zone or name.endswith("." + zone)


def _records(name: str, qtype: int) -> tuple[Record, ...] | None:
    """Records for (name, qtype); empty for a name that exists without that type; None for no such name."""
    if name == ZONE:
        apex: dict[int, bytes] = {
            NS: dnswire.encode_name("ns.lab"),
            SOA: dnswire.encode_name("ns.lab")
            + dnswire.encode_name("hostmaster.lab")
            + struct.pack("!5I", 1, 3600, 600, 86400, TTL),
        }
        return (Record(name, qtype, TTL, apex[qtype]),) if qtype in apex else ()
    addresses = address_records(name)
    if addresses is None:
        return None
    v4, v6 = addresses
    if qtype == A:
        return (Record(name, A, TTL, ipaddress.IPv4Address(v4).packed),)
    if qtype == AAAA:
        return (Record(name, AAAA, TTL, ipaddress.IPv6Address(v6).packed),)
    if _in(name, TUNNEL_ZONE):
        reply = hashlib.sha256(name.encode()).digest()
        if qtype == TXT:
            return (Record(name, TXT, 0, dnswire.txt_data([reply.hex().encode(), reply.hex()[:32].encode()])),)
        if qtype == NULL:
            return (Record(name, NULL, 0, reply * 4),)
    return ()


def answer(query: bytes) -> bytes | None:
    """The authority's response to one DNS message, or None for bytes that are not a query worth answering."""
    try:
        message = dnswire.parse(query)
    except dnswire.DnsError:
        return None
    if message.is_response:
        return None
    if (message.flags >> 11) & 0xF != 0:
        return dnswire.build_response(message, dnswire.NOTIMP)
    if len(message.questions) != 1:
        return dnswire.build_response(message, 1)  # FORMERR
    name, qtype = message.questions[0]
    if not _in(name, ZONE):
        return dnswire.build_response(message, dnswire.REFUSED, authoritative=False)
    records = _records(name, qtype)
    if records is None:
        return dnswire.build_response(message, dnswire.NXDOMAIN)
    return dnswire.build_response(message, dnswire.NOERROR, records)


async def serve_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """DNS over TCP: length-prefixed messages until the client closes or idles (RFC 7766)."""
    with contextlib.suppress(asyncio.IncompleteReadError, TimeoutError, ConnectionError):
        while True:
            (length,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), IDLE))
            response = answer(await asyncio.wait_for(reader.readexactly(length), IDLE))
            if response is None:
                break
            writer.write(dnswire.tcp_frame(response))
            await writer.drain()
