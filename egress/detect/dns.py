"""The DNS wire format both ways, the one codec of egress: the detectors, the gateway's resolver and the lab use it.

Owns RFC 1035 section 4 (header, question, resource record, name compression 4.1.4), the presentation form of
names (RFC 1035 5.1) and the two-byte length prefix of DNS over TCP (RFC 1035 4.2.2, RFC 7766). Pure: bytes in,
data out, and back. Nothing here judges a message: `egress.detect.dns_tunnel` and the resolver do.

Errors: `DnsError` (a `ValueError`) is the only exception `parse` raises, for anything it cannot read
whole; `parse_partial` raises nothing: a message cut short (capture snap length, IP fragment) still yields the
header and the questions and records that were complete, with `Message.problem` saying what broke. Builders raise
`ValueError` for what cannot be encoded (a bad name, RDATA over 65535 bytes).

Names: questions and records keep their labels exactly as on the wire (``labels``). The text forms either keep
every byte (``name``: lowercased presentation form, ``.`` and ``\\`` inside a label escaped as ``\\.`` and
``\\\\``, bytes outside printable ASCII as ``\\DDD``, so 8-bit tunnel labels stay visible) or refuse
(`Question.hostname` is ``None`` unless every label is letters, digits, ``-`` and ``_``). Judge a name label by
label or through `hostname`, never by the text of `name`: ``a\\.allowed.lab`` ends in ``.allowed.lab`` as text,
yet its last two labels are ``a.allowed`` and ``lab``.

Hostile input: compression pointers must point strictly below every position the name has visited (4.1.4: "a
prior occurance"), so they cannot loop, and at most `MAX_POINTERS` are followed per name, so a chain of pointers
costs no more than a name's worth of work; a name is at most 255 octets (2.3.4); at most `MAX_QUESTIONS`
questions and `MAX_RECORDS` records are read.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

A, NS, CNAME, SOA, NULL, PTR, MX, TXT, KEY, AAAA, SRV, OPT, HTTPS = 1, 2, 5, 6, 10, 12, 15, 16, 25, 28, 33, 41, 65
IN: Final = 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
RCODE_NAMES: Final = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
QR, OPCODE, AA, TC, RD, RA = 0x8000, 0x7800, 0x0400, 0x0200, 0x0100, 0x0080
"""Header flag bits (RFC 1035 4.1.1)."""

MAX_NAME: Final = 255
"""RFC 1035 2.3.4: a name is 255 octets or less on the wire, length octets and the root's zero included."""
MAX_POINTERS: Final = 127
"""A name of 255 octets has at most 127 labels; a name needs no more pointers than that."""
MAX_QUESTIONS: Final = 16
"""Ordinary messages carry one question (RFC 9619); more than this is not read."""
MAX_RECORDS: Final = 256
"""Records read over all three sections: more than ordinary answers hold, and it bounds the work per message
(at most 256 names of 127 pointers each, where a 64 KiB message could hold 6,000 records)."""

_HEADER: Final = struct.Struct("!HHHHHH")
_QUESTION: Final = struct.Struct("!HH")
_RECORD: Final = struct.Struct("!HHIH")
_COMPRESSED_RDATA: Final = {NS: (0, 1), CNAME: (0, 1), PTR: (0, 1), MX: (2, 1), SOA: (0, 2)}
"""Types whose RDATA may hold compressed names (RFC 3597 section 4): (offset of the first name, how many names).
They are stored expanded, so a parsed record means the same wherever it is written again."""
_PRINTABLE: Final = bytes(b for b in range(0x21, 0x7F) if b not in b".\\")
_ESCAPED: Final = tuple(
    chr(b) if b in _PRINTABLE else "\\" + chr(b) if b in b".\\" else f"\\{b:03d}" for b in range(256)
)
"""Each byte in presentation form (RFC 1035 5.1): itself, ``\\`` before itself, or ``\\DDD`` (decimal)."""
_TOKEN: Final = re.compile(r"\\([0-9]{3})|\\([\x21-\x7e])|(\.)|([\x21-\x5b\x5d-\x7e])|(.)", re.DOTALL)
"""One character of a name in presentation form: decimal escape, escaped character, dot, plain, or not allowed."""
_HOSTNAME: Final = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"


class DnsError(ValueError):
    """The bytes are not a DNS message this codec can read whole; the message says where it broke."""


def name_text(labels: Iterable[bytes]) -> str:
    """The lowercased presentation form of a name, without the trailing dot (``""`` for the root). Lossless."""
    return ".".join([_label_text(label.lower()) for label in labels])


@functools.lru_cache(maxsize=4096)
def _name_of(labels: tuple[bytes, ...]) -> str:
    """`name_text` of a question's labels, kept for the names asked lately: the scanner's tunnel tracker and name
    lists each ask for a question's name, and clients ask for the same names again and again."""
    return name_text(labels)


def _label_text(label: bytes) -> str:
    if not label.translate(None, _PRINTABLE):
        return label.decode("ascii")
    return "".join(_ESCAPED[b] for b in label)


def name_labels(name: str) -> tuple[bytes, ...]:
    """The labels of a name in presentation form (``\\.``, ``\\\\`` and ``\\DDD`` escapes; trailing dot optional).

    Raises `ValueError` for an empty label, a character outside printable ASCII, or a label or name too long.
    """
    if name in ("", "."):
        return ()
    labels: list[bytes] = []
    label = bytearray()
    dot = False
    for match in _TOKEN.finditer(name):
        decimal, escaped, dot_, plain, bad = match.groups()
        if bad is not None:
            raise ValueError(f"{bad!r} in DNS name {name!r} must be escaped")
        dot = dot_ is not None
        if dot:
            labels.append(bytes(label))
            label = bytearray()
        else:
            label.append(int(decimal) if decimal else ord(escaped or plain))  # ValueError past 255
    if label or not dot:
        labels.append(bytes(label))
    if b"" in labels:
        raise ValueError(f"empty label in DNS name {name!r}")
    _encode_labels(labels)  # checks the lengths
    return tuple(labels)


def _encode_labels(labels: Iterable[bytes]) -> bytes:
    out = bytearray()
    for label in labels:
        if not 0 < len(label) < 64:
            raise ValueError(f"DNS label of {len(label)} bytes: {label!r}")
        out += bytes([len(label)]) + label
    if len(out) >= MAX_NAME:
        raise ValueError(f"DNS name of {len(out) + 1} bytes")
    return bytes(out) + b"\0"


def encode_name(name: str) -> bytes:
    """A name in presentation form on the wire, uncompressed (also the RDATA of NS, CNAME and PTR)."""
    return _encode_labels(name_labels(name))


@dataclass(frozen=True, slots=True)
class Question:
    """One entry of the question section."""

    labels: tuple[bytes, ...]
    """The name's labels exactly as on the wire (case kept), root last and left out."""
    qtype: int
    qclass: int = IN

    @property
    def name(self) -> str:
        """Lowercased presentation form (see the module docstring): exact, but compare labels, not substrings."""
        return _name_of(self.labels)

    @property
    def hostname(self) -> str | None:
        """The lowercased name if every label is letters, digits, ``-`` and ``_``, else ``None``: a name such as
        ``allowed.lab:x``, ``[allowed.lab]``, one with a ``.`` or a byte outside ASCII in a label, is no hostname."""
        if any(label.translate(None, _HOSTNAME) for label in self.labels):
            return None
        return ".".join(label.decode("ascii") for label in self.labels).lower()


@dataclass(frozen=True, slots=True)
class Record:
    """One resource record of the answer, authority or additional section."""

    labels: tuple[bytes, ...]
    """The owner name's labels exactly as on the wire, as `Question.labels`."""
    rtype: int
    ttl: int
    data: bytes
    """RDATA as on the wire, except that names in the types of RFC 3597 section 4 are expanded (uncompressed)."""
    rclass: int = IN

    @property
    def name(self) -> str:
        """The owner name, lowercased presentation form."""
        return name_text(self.labels)


@dataclass(frozen=True, slots=True)
class Message:
    """A DNS message: the header's id and flags, and its four sections."""

    id: int
    flags: int
    questions: tuple[Question, ...] = ()
    answers: tuple[Record, ...] = ()
    authorities: tuple[Record, ...] = ()
    additionals: tuple[Record, ...] = ()
    problem: str = ""
    """Why the message is not exactly what its header announced (cut short, malformed, over a cap, followed by
    other bytes); empty when it is. Only `parse_partial` and `parse_questions` return a message with a problem."""

    @property
    def qdcount(self) -> int:
        """Questions held; for a message `parse` returned, the header's QDCOUNT."""
        return len(self.questions)

    @property
    def is_response(self) -> bool:
        return bool(self.flags & QR)

    @property
    def opcode(self) -> int:
        return (self.flags & OPCODE) >> 11

    @property
    def tc(self) -> bool:
        """Truncated: the sender had more to say than fitted (retry over TCP)."""
        return bool(self.flags & TC)

    @property
    def rcode(self) -> int:
        return self.flags & 0xF


def _read_name(data: bytes, pos: int, limit: int) -> tuple[tuple[bytes, ...], int]:
    """The labels of the name at ``pos`` and the position just past it; the name itself ends before ``limit``."""
    labels: list[bytes] = []
    size = 1  # the root's zero octet
    end = -1
    lowest = pos
    pointers = 0
    while True:
        if pos >= limit:
            raise DnsError("name runs past its end")
        length = data[pos]
        if length == 0:
            return tuple(labels), (end if end >= 0 else pos + 1)
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= limit:
                raise DnsError("compression pointer cut short")
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if end < 0:
                end = pos + 2
            pointers += 1
            if target >= lowest:
                raise DnsError(f"compression pointer to {target} does not point backwards")
            if pointers > MAX_POINTERS:
                raise DnsError(f"more than {MAX_POINTERS} compression pointers in a name")
            pos = lowest = target
            continue
        if kind:
            raise DnsError(f"label type {kind:#x}")  # 0x40 / 0x80: obsolete extended labels (RFC 6891 section 5)
        size += 1 + length
        if size > MAX_NAME:
            raise DnsError("name longer than 255 octets")
        if pos + 1 + length > limit:
            raise DnsError("label runs past its end")
        labels.append(data[pos + 1 : pos + 1 + length])
        pos += 1 + length


def _read_record(data: bytes, pos: int) -> tuple[Record, int]:
    labels, pos = _read_name(data, pos, len(data))
    if pos + _RECORD.size > len(data):
        raise DnsError("record cut short")
    rtype, rclass, ttl, length = _RECORD.unpack_from(data, pos)
    start, end = pos + _RECORD.size, pos + _RECORD.size + length
    if end > len(data):
        raise DnsError("record data cut short")
    rdata = data[start:end]
    if rtype in _COMPRESSED_RDATA:
        skip, count = _COMPRESSED_RDATA[rtype]
        expanded = bytearray(data[start : start + skip])
        pos = start + skip
        for _ in range(count):
            name, pos = _read_name(data, pos, end)
            expanded += b"".join([bytes((len(label),)) + label for label in name]) + b"\0"
        rdata = bytes(expanded + data[pos:end])
    return Record(labels, rtype, ttl, rdata, rclass), end


def _read_questions(data: bytes, qdcount: int, questions: list[Question]) -> int:
    """Append the question section's questions to ``questions`` (those before an error stay); where it ends."""
    pos = _HEADER.size
    for _ in range(min(qdcount, MAX_QUESTIONS)):
        labels, pos = _read_name(data, pos, len(data))
        if pos + _QUESTION.size > len(data):
            raise DnsError("question cut short")
        questions.append(Question(labels, *_QUESTION.unpack_from(data, pos)))
        pos += _QUESTION.size
    if qdcount > MAX_QUESTIONS:
        raise DnsError(f"{qdcount} questions")
    return pos


def parse_questions(data: bytes) -> Message | None:
    """`parse_partial` of the header and the question section only, its records left unread (no answers): what a
    reader of the asked names needs (`egress.detect.registry.DnsInspector` in the capture scanner). ``problem``
    says why the questions stopped early, if they did; ``None`` when shorter than a header."""
    if len(data) < _HEADER.size:
        return None
    ident, flags, qdcount = _HEADER.unpack_from(data)[:3]
    questions: list[Question] = []
    problem = ""
    try:
        _read_questions(data, qdcount, questions)
    except DnsError as error:
        problem = str(error)
    return Message(ident, flags, tuple(questions), (), (), (), problem)


def parse_partial(data: bytes) -> Message | None:
    """Parse one message (no TCP length prefix) as far as it goes; ``None`` when shorter than a header."""
    if len(data) < _HEADER.size:
        return None
    ident, flags, qdcount, *counts = _HEADER.unpack_from(data)
    questions: list[Question] = []
    sections: tuple[list[Record], list[Record], list[Record]] = ([], [], [])
    problem = ""
    try:
        pos = _read_questions(data, qdcount, questions)
        budget = MAX_RECORDS
        for section, count in zip(sections, counts, strict=True):
            for _ in range(min(count, budget)):
                record, pos = _read_record(data, pos)
                section.append(record)
            if count > budget:
                raise DnsError(f"more than {MAX_RECORDS} records")
            budget -= count
        if pos != len(data):
            raise DnsError(f"{len(data) - pos} bytes after the last record")
    except DnsError as error:
        problem = str(error)
    answers, authorities, additionals = (tuple(section) for section in sections)
    return Message(ident, flags, tuple(questions), answers, authorities, additionals, problem)


def parse(data: bytes) -> Message:
    """Parse one whole message (no TCP length prefix); raise `DnsError` unless every byte is read as announced."""
    message = parse_partial(data)
    if message is None:
        raise DnsError("shorter than a DNS header")
    if message.problem:
        raise DnsError(message.problem)
    return message


def encode(message: Message) -> bytes:
    """The message on the wire, names uncompressed; the header counts are those of the sections it holds."""
    records = (*message.answers, *message.authorities, *message.additionals)
    sizes = (len(message.answers), len(message.authorities), len(message.additionals))
    out = bytearray(_HEADER.pack(message.id, message.flags, len(message.questions), *sizes))
    for question in message.questions:
        out += _encode_labels(question.labels) + _QUESTION.pack(question.qtype, question.qclass)
    for record in records:
        if len(record.data) > 0xFFFF:
            raise ValueError(f"RDATA of {len(record.data)} bytes")
        out += _encode_labels(record.labels) + _RECORD.pack(record.rtype, record.rclass, record.ttl, len(record.data))
        out += record.data
    return bytes(out)


def build_query(ident: int, name: str, qtype: int, *, recursion: bool = True) -> bytes:
    """A standard query for one name in presentation form (RD set unless ``recursion`` is false)."""
    return encode(Message(ident, RD if recursion else 0, (Question(name_labels(name), qtype),)))


def build_response(
    query: Message,
    rcode: int,
    answers: Iterable[Record] = (),
    *,
    authoritative: bool = False,
    recursion_available: bool = False,
) -> bytes:
    """A response to ``query``: its id, opcode, RD and questions echoed (RFC 1035 4.1.1), ``rcode``, ``answers``."""
    flags = QR | (query.flags & (OPCODE | RD)) | (rcode & 0xF)
    flags |= (AA if authoritative else 0) | (RA if recursion_available else 0)
    return encode(Message(query.id, flags, query.questions, tuple(answers)))


def reply(query: bytes, rcode: int, *, recursion_available: bool = False) -> bytes | None:
    """A response without records to bytes that may not parse: the questions that could be read are echoed (none:
    a bare header, as for FORMERR). ``None`` when the bytes are shorter than a header."""
    message = parse_partial(query)
    if message is None:
        return None
    return build_response(message, rcode, recursion_available=recursion_available)


def address_of(record: Record) -> str | None:
    """The address in an A or AAAA record, else ``None``."""
    if record.rtype == A and len(record.data) == 4:
        return str(ipaddress.IPv4Address(record.data))
    if record.rtype == AAAA and len(record.data) == 16:
        return str(ipaddress.IPv6Address(record.data))
    return None


def target_of(record: Record) -> str | None:
    """The name an NS, CNAME or PTR record points at (presentation form), else ``None``."""
    if record.rtype not in (NS, CNAME, PTR):
        return None
    try:
        labels, end = _read_name(record.data, 0, len(record.data))
    except DnsError:
        return None
    return name_text(labels) if end == len(record.data) else None


def addresses(message: Message) -> list[tuple[str, int]]:
    """The A and AAAA addresses of the answer section with their TTLs, whatever owner name they are under (a CNAME
    chain from the question's name ends in them)."""
    return [(address, record.ttl) for record in message.answers if (address := address_of(record)) is not None]


def txt_data(strings: Iterable[bytes]) -> bytes:
    """RDATA of a TXT record made of these character-strings (each at most 255 bytes)."""
    return b"".join(bytes([len(s)]) + s for s in strings)


def tcp_frame(message: bytes) -> bytes:
    """DNS over TCP: the two-byte length before a message."""
    return len(message).to_bytes(2) + message


def split_tcp(stream: bytes) -> tuple[list[bytes], bytes]:
    """Split a DNS-over-TCP byte stream into whole messages (prefix removed) and the incomplete rest."""
    messages: list[bytes] = []
    pos = 0
    while pos + 2 <= len(stream):
        length = int.from_bytes(stream[pos : pos + 2])
        if pos + 2 + length > len(stream):
            break
        messages.append(stream[pos + 2 : pos + 2 + length])
        pos += 2 + length
    return messages, stream[pos:]
