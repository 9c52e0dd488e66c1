"""DNS message parsing: header, questions, answer types; tolerant of truncated and hostile messages.

Owns the wire format of RFC 1035 section 4 (header, question, resource record, name compression in 4.1.4)
and the two-byte length prefix of DNS over TCP (RFC 1035 4.2.2, RFC 7766). Nothing here judges a message;
`egress.detect.dns_tunnel` does that.

Robustness: a message cut short (capture snap length, IP fragment, a TCP segment) still yields the header and
whatever questions and records were complete, with ``truncated`` set. Compression pointers must point strictly
backwards (RFC 1035 4.1.4 says "a prior occurance"), which also makes loops impossible; the total name length is
capped at 255 octets (RFC 1035 2.3.4). Label bytes are decoded as latin-1 so every byte maps to one character:
non-hostname bytes (iodine's base128 encoding) stay visible to the tunnel heuristics.
"""

from __future__ import annotations

from dataclasses import dataclass

HEADER_LEN = 12
MAX_NAME = 255
"""RFC 1035 2.3.4: names are 255 octets or less on the wire."""
MAX_QUESTIONS = 16
"""Ordinary messages carry one question (RFC 9619); we read at most this many."""
MAX_RECORDS = 64
"""Answer records read for their types; the rest are counted in the header only."""


@dataclass(frozen=True, slots=True)
class Question:
    """One question: the name, lowercased, without the trailing dot (``""`` for the root), and its type."""

    name: str
    qtype: int


@dataclass(frozen=True, slots=True)
class Message:
    """The parts of a DNS message the detectors use."""

    id: int
    is_response: bool
    opcode: int
    rcode: int
    questions: tuple[Question, ...]
    answer_count: int
    """ANCOUNT from the header (what the message claims, even if truncated)."""
    answer_types: tuple[int, ...]
    """Types of the answer records actually parsed, in order."""
    truncated: bool
    """The bytes ended (or went wrong) before everything the header announced was read."""


class _Bad(Exception):
    """Internal: the message ends or breaks at this point."""


def _read_name(data: bytes, offset: int) -> tuple[str, int]:
    """Read a possibly compressed name at ``offset``; return (name, offset just past it in the message)."""
    labels: list[str] = []
    total = 0
    end = -1
    pos = offset
    lowest = offset  # pointers must go strictly below every position visited so far
    while True:
        if pos >= len(data):
            raise _Bad
        length = data[pos]
        if length == 0:
            if end < 0:
                end = pos + 1
            break
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= len(data):
                raise _Bad
            target = ((length & 0x3F) << 8) | data[pos + 1]
            if end < 0:
                end = pos + 2
            if target >= lowest:
                raise _Bad
            lowest = target
            pos = target
            continue
        if kind:
            raise _Bad  # 0x40 / 0x80: extended label types, obsolete (RFC 6891 section 5)
        total += length + 1
        if total > MAX_NAME or pos + 1 + length > len(data):
            raise _Bad
        labels.append(data[pos + 1 : pos + 1 + length].decode("latin-1").lower())
        pos += 1 + length
    return ".".join(labels), end


def parse(data: bytes) -> Message | None:
    """Parse one DNS message (no TCP length prefix). ``None`` when shorter than a header."""
    if len(data) < HEADER_LEN:
        return None
    ident = int.from_bytes(data[0:2])
    flags = int.from_bytes(data[2:4])
    qdcount = int.from_bytes(data[4:6])
    ancount = int.from_bytes(data[6:8])
    questions: list[Question] = []
    answer_types: list[int] = []
    truncated = False
    pos = HEADER_LEN
    try:
        for _ in range(min(qdcount, MAX_QUESTIONS)):
            name, pos = _read_name(data, pos)
            if pos + 4 > len(data):
                raise _Bad
            questions.append(Question(name, int.from_bytes(data[pos : pos + 2])))
            pos += 4
        if qdcount > MAX_QUESTIONS:
            raise _Bad
        for _ in range(min(ancount, MAX_RECORDS)):
            _, pos = _read_name(data, pos)
            if pos + 10 > len(data):
                raise _Bad
            answer_types.append(int.from_bytes(data[pos : pos + 2]))
            pos += 10 + int.from_bytes(data[pos + 8 : pos + 10])
            if pos > len(data):
                raise _Bad
    except _Bad:
        truncated = True
    return Message(
        id=ident,
        is_response=bool(flags & 0x8000),
        opcode=(flags >> 11) & 0xF,
        rcode=flags & 0xF,
        questions=tuple(questions),
        answer_count=ancount,
        answer_types=tuple(answer_types),
        truncated=truncated,
    )


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
