"""The little DNS the lab needs: build queries and answers, parse both (RFC 1035 section 4).

Shared by the lab's authority and DoH endpoint (`egress.lab.servers`) and the sandbox's stub resolver
(`egress.lab.scenarios`). Names are encoded without compression; parsing follows compression pointers backwards
only (RFC 1035 4.1.4), so a hostile answer cannot loop. This is lab tooling, not the gateway's resolver.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

A, NS, SOA, NULL, TXT, AAAA = 1, 2, 6, 10, 16, 28
NOERROR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 2, 3, 4, 5
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
TYPE_NAMES = {A: "A", NS: "NS", SOA: "SOA", NULL: "NULL", TXT: "TXT", AAAA: "AAAA"}
_HEADER = struct.Struct("!HHHHHH")


class DnsError(ValueError):
    """The bytes are not a DNS message this module can read."""


@dataclass(frozen=True, slots=True)
class Record:
    name: str
    rtype: int
    ttl: int
    data: bytes
    """RDATA as on the wire (names inside it are not expanded: the lab's types carry none that matter)."""


@dataclass(frozen=True, slots=True)
class Message:
    id: int
    flags: int
    questions: tuple[tuple[str, int], ...]
    """(name lowercased without trailing dot, qtype)."""
    answers: tuple[Record, ...]

    @property
    def rcode(self) -> int:
        return self.flags & 0xF

    @property
    def is_response(self) -> bool:
        return bool(self.flags & 0x8000)


def encode_name(name: str) -> bytes:
    out = bytearray()
    for label in name.rstrip(".").split(".") if name.strip(".") else []:
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad DNS label in {name!r}")
        out += bytes([len(raw)]) + raw
    if len(out) > 254:
        raise ValueError(f"DNS name too long: {name!r}")
    return bytes(out) + b"\0"


def _read_name(data: bytes, offset: int) -> tuple[str, int]:
    labels: list[str] = []
    end = -1
    limit = offset
    while True:
        if offset >= len(data):
            raise DnsError("name runs past the message")
        length = data[offset]
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(data):
                raise DnsError("cut compression pointer")
            target = ((length & 0x3F) << 8) | data[offset + 1]
            if end < 0:
                end = offset + 2
            if target >= limit:
                raise DnsError("compression pointer does not point backwards")
            offset = limit = target
            continue
        if length == 0:
            return ".".join(labels).lower(), (end if end >= 0 else offset + 1)
        if length > 63 or offset + 1 + length > len(data):
            raise DnsError("bad label")
        labels.append(data[offset + 1 : offset + 1 + length].decode("latin-1"))
        offset += 1 + length


def build_query(qid: int, name: str, qtype: int, *, recursion: bool = True) -> bytes:
    flags = 0x0100 if recursion else 0
    return _HEADER.pack(qid, flags, 1, 0, 0, 0) + encode_name(name) + struct.pack("!HH", qtype, 1)


def build_response(
    query: Message, rcode: int, answers: tuple[Record, ...] = (), *, authoritative: bool = True
) -> bytes:
    flags = 0x8000 | (query.flags & 0x0100) | rcode  # QR, echo RD
    if authoritative:
        flags |= 0x0400
    out = bytearray(_HEADER.pack(query.id, flags, len(query.questions), len(answers), 0, 0))
    for qname, qtype in query.questions:
        out += encode_name(qname) + struct.pack("!HH", qtype, 1)
    for record in answers:
        out += encode_name(record.name) + struct.pack("!HHIH", record.rtype, 1, record.ttl, len(record.data))
        out += record.data
    return bytes(out)


def parse(data: bytes) -> Message:
    if len(data) < _HEADER.size:
        raise DnsError("shorter than a DNS header")
    qid, flags, qdcount, ancount, _, _ = _HEADER.unpack_from(data)
    offset = _HEADER.size
    questions: list[tuple[str, int]] = []
    for _ in range(min(qdcount, 16)):
        name, offset = _read_name(data, offset)
        if offset + 4 > len(data):
            raise DnsError("cut question")
        questions.append((name, struct.unpack_from("!H", data, offset)[0]))
        offset += 4
    answers: list[Record] = []
    for _ in range(min(ancount, 64)):
        name, offset = _read_name(data, offset)
        if offset + 10 > len(data):
            raise DnsError("cut record")
        rtype, _, ttl, length = struct.unpack_from("!HHIH", data, offset)
        offset += 10
        if offset + length > len(data):
            raise DnsError("cut rdata")
        answers.append(Record(name, rtype, ttl, data[offset : offset + length]))
        offset += length
    return Message(qid, flags, tuple(questions), tuple(answers))


def address_of(record: Record) -> str | None:
    """The address in an A or AAAA record, else None."""
    if record.rtype == A and len(record.data) == 4:
        return str(ipaddress.IPv4Address(record.data))
    if record.rtype == AAAA and len(record.data) == 16:
        return str(ipaddress.IPv6Address(record.data))
    return None


def txt_data(strings: list[bytes]) -> bytes:
    """RDATA of a TXT record made of these character-strings (each at most 255 bytes)."""
    return b"".join(bytes([len(s)]) + s for s in strings)


def tcp_frame(message: bytes) -> bytes:
    """DNS over TCP: a two-byte length before each message (RFC 1035 4.2.2)."""
    return struct.pack("!H", len(message)) + message
