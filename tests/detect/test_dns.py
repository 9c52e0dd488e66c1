"""Tests for egress.detect.dns: the DNS wire parser."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress.detect import dns

# benign/ndpi_dns.pcap: AAAA query for www.example.com
EXAMPLE_QUERY = bytes.fromhex("bc1f0100000100000000000003777777076578616d706c6503636f6d00001c0001")
# benign/ndpi_punycode-idn.pcap: response for i.scdn.co with a CNAME (compressed names) and an A record
SCDN_RESPONSE = bytes.fromhex(
    "a57b818000010002000000000169047363646e02636f0000010001c00c000500010000000b001f067363646e636f0773706f"
    "74696679036d617006666173746c79036e657400c027000100010000001e0004924b3ef8"
)
# benign/ndpi_dns_fragmented.pcap: first 200 bytes of a 1472-byte DNSKEY response (the rest is in IP fragments)
DNSKEY_HEAD = bytes.fromhex(
    "d43f841000010004000000010877656265726c61620264650000300001c00c003000010000003c02080101030a03010001dd"
    "effded22ad760a3b0b58101dd53deef3f7daaf8b995ef7fcb55d7ca9969e72ff9c5aaab9bfade946f29831f06b0d5b6220be"
    "224a009e94894e391112a81fe7f3daa7f6494147156c24c1e896c8b6781191e1a30be2084c7de0fe0eb3034a5e67581dedfc"
    "ae51cf6bedceca95bd8187d1f6584228ade77823eaf3f68516c4d323b750f90da41115a208c0b26e5e163b0b01a3f4659cf3"
)
# tunnel/dmachard_iodine.pcap: a query whose label holds 8-bit bytes (iodine's charset probe)
IODINE_8BIT = bytes.fromhex(
    "836501000001000000000001297a30706961412d4161616868682d4472696e6b2d6d616c2d65696e2d4ae46765726d65697374"
    "65722d027431076269696c6c706903636f6d00000a00010000291000000080000000"
)


def test_query() -> None:
    message = dns.parse(EXAMPLE_QUERY)
    assert message == dns.Message(
        id=0xBC1F,
        is_response=False,
        opcode=0,
        rcode=0,
        questions=(dns.Question("www.example.com", 28),),
        answer_count=0,
        answer_types=(),
        truncated=False,
    )


def test_response_with_compression() -> None:
    message = dns.parse(SCDN_RESPONSE)
    assert message is not None
    assert message.is_response
    assert message.questions == (dns.Question("i.scdn.co", 1),)
    assert message.answer_types == (5, 1)
    assert not message.truncated


def test_truncated_response_keeps_what_was_complete() -> None:
    message = dns.parse(DNSKEY_HEAD)
    assert message is not None
    assert message.questions == (dns.Question("weberlab.de", 48),)
    assert message.answer_count == 4
    assert message.truncated


def test_eight_bit_labels_survive_lowercased() -> None:
    message = dns.parse(IODINE_8BIT)
    assert message is not None
    assert message.questions[0].name == "z0piaa-aaahhh-drink-mal-ein-j\xe4germeister-.t1.biillpi.com"
    assert message.questions[0].qtype == 10


def header(qdcount: int = 1, ancount: int = 0) -> bytes:
    return struct.pack("!HHHHHH", 1, 0x0100, qdcount, ancount, 0, 0)


@pytest.mark.parametrize(
    "data",
    [
        header() + b"\xc0\x0c\x00\x01\x00\x01",  # pointer to itself
        header() + b"\x01a\xc0\x0c\x00\x01\x00\x01",  # pointer back to its own start: a loop
        header() + b"\xc0\x20",  # pointer forwards
        header() + b"\x05ab",  # label runs past the end
        header() + b"\x41abc\x00\x00\x01\x00\x01",  # reserved label type 0x40
        header() + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01",  # name longer than 255 octets
        header(ancount=3) + b"\x01a\x00\x00\x01\x00\x01" + b"\xc0\x0c\x00\x01",  # record cut short
    ],
    ids=["self-pointer", "loop", "forward-pointer", "short-label", "label-type", "long-name", "short-record"],
)
def test_hostile_or_cut_messages_are_marked_truncated(data: bytes) -> None:
    message = dns.parse(data)
    assert message is not None
    assert message.truncated


def test_shorter_than_a_header_is_not_dns() -> None:
    assert dns.parse(EXAMPLE_QUERY[:11]) is None


def test_split_tcp() -> None:
    stream = len(EXAMPLE_QUERY).to_bytes(2) + EXAMPLE_QUERY + len(SCDN_RESPONSE).to_bytes(2) + SCDN_RESPONSE
    assert dns.split_tcp(stream) == ([EXAMPLE_QUERY, SCDN_RESPONSE], b"")
    assert dns.split_tcp(stream[:-5]) == ([EXAMPLE_QUERY], stream[2 + len(EXAMPLE_QUERY) : -5])
    for cut in range(len(stream) + 1):
        whole, rest = dns.split_tcp(stream[:cut])
        assert b"".join(len(m).to_bytes(2) + m for m in whole) + rest == stream[:cut]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    dns.parse(data)
    dns.parse(EXAMPLE_QUERY[:12] + data)
    dns.split_tcp(data)
