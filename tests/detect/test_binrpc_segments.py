"""Tests for binrpc against red team 6's shapes: ASN.1 BER constructed strings (a name in pieces), Cap'n Proto
Text (reached by a list pointer), a BSON document keyed by the method; the variants past each; text, benign
bytes and near misses still not read."""

from __future__ import annotations

import json
import struct

import pytest

from egress.detect import binrpc
from egress.detect.base import Category
from tests.detect.feeding import feed_every_split, feed_stream
from tests.security.redteam_ber_kit import call
from tests.security.redteam_capnp_kit import message


def _length(size: int, long: bool = False) -> bytes:
    """A BER length: short form, or ``81 L`` when ``long`` (DER forbids it, BER allows it)."""
    return bytes([0x81, size]) if long or size >= 0x80 else bytes([size])


def piece(raw: bytes, tag: int = 0x04, long: bool = False) -> bytes:
    return bytes([tag]) + _length(len(raw), long) + raw


def constructed(parts: list[bytes], tag: int = 0x2C, definite: bool = False, long: bool = False) -> bytes:
    """A constructed string of already encoded ``parts`` (pieces or nested constructed strings)."""
    content = b"".join(parts)
    if definite:
        return bytes([tag]) + _length(len(content), long) + content
    return bytes([tag, 0x80]) + content + b"\x00\x00"


def split(text: bytes, size: int, **kwargs: int | bool) -> list[bytes]:
    return [piece(text[i : i + size], **kwargs) for i in range(0, len(text), size)]  # type: ignore[arg-type]


SEQ = b"\x30\x80\x02\x01\x01"
"""A call's opening: a SEQUENCE (indefinite) and its id; the method follows."""
BER = {
    "seg8": call(1, "mining.subscribe", ["cpuminer/2.5.1"], "seg8"),
    "seg1": call(2, "mining.authorize", ["w", "x"], "seg1"),
    "definite-seg4": call(3, "mining.submit", ["w", "j"], "definite"),
    "long-lengths": SEQ + constructed(split(b"eth_submitLogin", 4, long=True)),
    "long-outer-length": SEQ + constructed(split(b"getblocktemplate", 8), definite=True, long=True),
    "nested": SEQ + constructed([constructed(split(b"mining.", 3)), constructed(split(b"notify", 2), tag=0x24)]),
    "nested-definite": SEQ + constructed([constructed(split(b"eth_", 2), definite=True), piece(b"getWork")], True),
    "empty-pieces": SEQ + constructed([piece(b""), piece(b"submit"), piece(b""), piece(b""), piece(b"block")]),
    "utf8-and-ia5-pieces": SEQ + constructed([piece(b"getw", 0x0C), piece(b"ork", 0x16)], tag=0x24),
    "context-tag": SEQ + constructed(split(b"mining.subscribe", 5), tag=0xA1),
    "octet-string": SEQ + constructed(split(b"MINING.SUBMIT", 4), tag=0x24, definite=True),
}


def _bson(key: bytes, kind: int = 0x03) -> bytes:
    """A BSON document ``{key: {}}`` (an element of type ``kind`` keyed by the method)."""
    value = {0x03: b"\x05\x00\x00\x00\x00", 0x08: b"\x01", 0x10: b"\x01\x00\x00\x00"}[kind]
    body = bytes([kind]) + key + b"\x00" + value
    return struct.pack("<i", len(body) + 5) + body + b"\x00"


POSITIVES = {
    **{f"ber-{name}": data for name, data in BER.items()},
    "capnp-eth_submitLogin": message(1, "eth_submitLogin", json.dumps(["0x" + "ab" * 20])),
    "capnp-eth_getWork": message(2, "eth_getWork", "[]"),
    "capnp-submitblock": message(3, "submitblock", json.dumps(["00" * 80])),
    "capnp-second-pointer": message(4, "id-1", "getblocktemplate"),  # the text right after its own pointer
    "bson-key-document": _bson(b"getblocktemplate"),
    "bson-key-bool": _bson(b"eth_submitWork", 0x08),
    "bson-key-int": _bson(b"submit_block", 0x10),
}

NEGATIVES = {
    "ber-other-words": SEQ + constructed(split(b"mining.company", 4)),
    "ber-one-piece-short-of-a-name": SEQ + constructed(split(b"mining.subscrib", 4)),
    "ber-a-sequence-of-pieces": b"\x30\x80" + b"".join(split(b"mining.subscribe", 8)) + b"\x00\x00",
    "ber-unended": SEQ + b"\x2c\x80" + b"".join(split(b"getwork", 3)) + b"\x04\x01",
    "ber-over-64-bytes": SEQ + constructed(split(b" " * 60 + b"getwork", 8)),
    "ber-definite-too-short": SEQ + b"\x2c\x08" + b"".join(split(b"getwork", 4)),
    "capnp-count-past-the-pads": message(1, "eth_getWork", "[]").replace(b"\x62\x00\x00\x00", b"\xf2\x00\x00\x00"),
    "bson-key-deprecated-type": b"\x00\x00\x0fgetblocktemplate\x00",
    "bson-key-without-nul": b"\x05\x00\x00\x00\x03eth_getWork\x01",
}


@pytest.mark.parametrize("name", sorted(POSITIVES))
def test_finds_each_shape(name: str) -> None:
    found = feed_stream(binrpc.detect, POSITIVES[name])
    assert found is not None
    assert (found.category, found.protocol, found.detector) == (Category.MINING, binrpc.PROTOCOL, binrpc.NAME)


@pytest.mark.parametrize("name", sorted(NEGATIVES))
def test_ignores_near_misses(name: str) -> None:
    assert feed_stream(binrpc.detect, NEGATIVES[name]) is None


@pytest.mark.parametrize("name", ["seg1", "definite-seg4", "nested"])
def test_every_split_finds_a_constructed_string(name: str) -> None:
    stream = b"\x30\x80\x02\x01\x07\x00\x00" * 40 + BER[name]  # the string past the search's overlap
    assert all(found is not None for found in feed_every_split(binrpc.detect, stream))


def test_the_pool_side_alone() -> None:
    assert feed_stream(binrpc.detect, b"\x00" * 8, BER["context-tag"]) is not None
