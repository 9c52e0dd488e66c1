"""DNS bytes the resolver writes and the answer records it reads (RFC 1035 §4): refusals and NXDOMAIN built from
the query, and the A/AAAA addresses (with TTLs) of an upstream answer.

Pure functions; the message parser for questions lives in `egress.detect.dns`.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final

NOERROR: Final = 0
FORMERR: Final = 1
SERVFAIL: Final = 2
NXDOMAIN: Final = 3
REFUSED: Final = 5

TYPE_A: Final = 1
TYPE_AAAA: Final = 28
_HEADER: Final = struct.Struct(">HHHHHH")


def question_end(query: bytes) -> int | None:
    """Offset just past the first question, or ``None`` if the query does not hold one whole question."""
    pos = 12
    while pos < len(query):
        length = query[pos]
        if length == 0:
            end = pos + 1 + 4
            return end if end <= len(query) else None
        if length & 0xC0:
            return None  # a query's first name is never compressed
        pos += 1 + length
    return None


def reply(query: bytes, rcode: int) -> bytes | None:
    """A response to ``query`` with no records and ``rcode``, echoing the question (``None`` if unusable)."""
    if len(query) < 12:
        return None
    ident, flags, qdcount, _, _, _ = _HEADER.unpack_from(query)
    end = question_end(query) if qdcount >= 1 else 12
    if end is None:
        return None
    opcode_rd = flags & 0x7900  # opcode and RD
    out_flags = 0x8000 | opcode_rd | 0x0080 | (rcode & 0xF)  # QR, RA
    return _HEADER.pack(ident, out_flags, 1 if qdcount else 0, 0, 0, 0) + query[12:end]


def rcode_of(message: bytes) -> int:
    return message[3] & 0xF if len(message) >= 4 else SERVFAIL


def is_truncated(message: bytes) -> bool:
    return len(message) >= 4 and bool(message[2] & 0x02)


def _skip_name(data: bytes, pos: int) -> int:
    while True:
        if pos >= len(data):
            raise ValueError("name runs past the message")
        length = data[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2
        if length & 0xC0:
            raise ValueError("unsupported label type")
        pos += 1 + length


def addresses(message: bytes) -> list[tuple[str, int]]:
    """The A and AAAA addresses in the answer section, with their TTLs, whatever name they are under.

    The resolver binds them to the question's name: a client that asked for ``pypi.org`` and got a CNAME chain
    ending in CDN addresses will connect to those addresses naming ``pypi.org``.
    """
    if len(message) < 12:
        return []
    _, _, qdcount, ancount, _, _ = _HEADER.unpack_from(message)
    found: list[tuple[str, int]] = []
    try:
        pos = 12
        for _ in range(qdcount):
            pos = _skip_name(message, pos) + 4
        for _ in range(min(ancount, 256)):
            pos = _skip_name(message, pos)
            rtype, _rclass, ttl, rdlength = struct.unpack_from(">HHIH", message, pos)
            pos += 10
            rdata = message[pos : pos + rdlength]
            if len(rdata) < rdlength:
                break
            if rtype == TYPE_A and rdlength == 4:
                found.append((str(ipaddress.IPv4Address(rdata)), ttl))
            elif rtype == TYPE_AAAA and rdlength == 16:
                found.append((str(ipaddress.IPv6Address(rdata)), ttl))
            pos += rdlength
    except (ValueError, struct.error):
        pass
    return found
