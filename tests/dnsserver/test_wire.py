"""DNS bytes the resolver writes and reads: refusals echo the question; answers yield addresses with TTLs."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress.detect import dns
from egress.dnsserver import wire


def query(name: str, qtype: int = 1, ident: int = 0x1234) -> bytes:
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))
    return struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0) + labels + b"\x00" + struct.pack(">HH", qtype, 1)


def answer(name: str, records: list[tuple[int, int, bytes]]) -> bytes:
    base = bytearray(query(name))
    base[2:4] = struct.pack(">H", 0x8180)
    base[6:8] = struct.pack(">H", len(records))
    for rtype, ttl, rdata in records:
        base += b"\xc0\x0c" + struct.pack(">HHIH", rtype, 1, ttl, len(rdata)) + rdata
    return bytes(base)


@pytest.mark.parametrize("rcode", [wire.REFUSED, wire.NXDOMAIN, wire.SERVFAIL])
def test_reply_echoes_id_and_question_with_the_rcode(rcode: int) -> None:
    asked = query("blocked.example.com")
    out = wire.reply(asked, rcode)
    assert out is not None
    parsed = dns.parse(out)
    assert parsed is not None
    assert parsed.id == 0x1234
    assert parsed.is_response
    assert parsed.rcode == rcode
    assert [q.name for q in parsed.questions] == ["blocked.example.com"]
    assert parsed.answer_count == 0


def test_addresses_reads_a_and_aaaa_under_a_cname_chain() -> None:
    cname = b"\x03cdn\x07example\x03net\x00"
    message = answer(
        "pypi.org",
        [
            (5, 300, cname),
            (1, 60, bytes([198, 18, 10, 1])),
            (28, 120, bytes(15) + b"\x01"),
        ],
    )
    assert wire.addresses(message) == [("198.18.10.1", 60), ("::1", 120)]


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    wire.addresses(data)
    wire.reply(data, wire.REFUSED)
