"""Tests for binrpc against red team 4's shapes: names that are no one length-prefixed run of bytes (CBOR chunked
strings, msgpack ext and fixext, BSON binary, non-minimal varints, padding, capitals, a bare name in binary bytes),
and the attacker's variants past each accepted shape; text and benign bytes still not read."""

from __future__ import annotations

import random
import struct

import pytest

from egress.detect import binrpc
from egress.detect.base import Category, Finding, FlowView
from egress.detect.engine import FlowInspector
from tests.detect.feeding import META, feed_every_split, feed_stream
from tests.security.redteam_binsplit_kit import cbor, msgext
from tests.security.redteam_msgpack_kit import pack


def _head(major: int, size: int, width: int = 0) -> bytes:
    """A CBOR head of ``major`` and ``size``: shortest form, or a 1/2/4/8-byte length when ``width`` says."""
    if width == 0 and size < 24:
        return bytes([major << 5 | size])
    width = width or 1
    return bytes([major << 5 | {1: 24, 2: 25, 4: 26, 8: 27}[width]]) + size.to_bytes(width)


def chunked(pieces: list[bytes], major: int = 3, width: int = 0, chunk_major: int | None = None) -> bytes:
    """A CBOR indefinite-length string (``7f``/``5f``) of ``pieces``, each a definite chunk, then ``ff``."""
    inner = major if chunk_major is None else chunk_major
    return bytes([major << 5 | 31]) + b"".join(_head(inner, len(piece), width) + piece for piece in pieces) + b"\xff"


def call(method: bytes, extra: bytes = b"") -> bytes:
    """A CBOR map ``{"id": 1, "method": <method bytes as given>, "params": []}`` (``extra``: more bytes after)."""
    return b"\xa3" + _head(3, 2) + b"id\x01" + _head(3, 6) + b"method" + method + _head(3, 6) + b"params\x80" + extra


def _ext(data: bytes, kind: int = 1) -> bytes:
    size = len(data)
    fixed = {1: 0xD4, 2: 0xD5, 4: 0xD6, 8: 0xD7, 16: 0xD8}
    if size in fixed:
        return bytes([fixed[size], kind]) + data
    if size < 256:
        return bytes([0xC7, size, kind]) + data
    return b"\xc8" + size.to_bytes(2) + bytes([kind]) + data


def mp_call(method: bytes) -> bytes:
    """A msgpack map ``{"id": 1, "method": <method bytes as given>}``."""
    return b"\x82\xa2id\x01\xa6method" + method


def _pieces(text: bytes, size: int) -> list[bytes]:
    return [text[i : i + size] for i in range(0, len(text), size)]


SUB = b"mining.subscribe"
POSITIVES = {
    # CBOR chunked strings (RFC 8949 §3.2.3), red team 4's shape and the variants past it
    "cbor-chunked-halves": cbor({"id": 1, "method": "mining.subscribe", "params": []}),
    "cbor-chunked-three": call(chunked([b"mining", b".sub", b"scribe"])),
    "cbor-chunked-ones": call(chunked(_pieces(b"mining.authorize", 1))),
    "cbor-chunked-empty": call(chunked([b"", b"mining.", b"", b"", b"submit", b""])),
    "cbor-chunked-many-empty": call(chunked([b"mining."] + [b""] * 3000 + [b"notify"])),
    "cbor-chunked-1byte-lengths": call(chunked([b"mining.s", b"ubmit"], width=1)),
    "cbor-chunked-2byte-lengths": call(chunked([b"mining.s", b"ubmit"], width=2)),
    "cbor-chunked-4byte-lengths": call(chunked([b"mining.s", b"ubmit"], width=4)),
    "cbor-chunked-8byte-lengths": call(chunked([b"mining.s", b"ubmit"], width=8)),
    "cbor-chunked-bytes": call(chunked([b"mining.s", b"ubscribe"], major=2)),
    "cbor-chunked-bytes-ones": call(chunked(_pieces(b"mining.set_difficulty", 1), major=2)),
    "cbor-chunked-mixed-majors": call(chunked([b"mining.s", b"ubscribe"], major=3, chunk_major=2)),
    "cbor-chunked-capitals": call(chunked([b"Mining.Sub", b"SCRIBE"])),
    "cbor-chunked-padded": call(chunked([b"\x00mining.submit", b"  "])),
    "cbor-chunked-eth": call(chunked([b"eth_sub", b"mitLogin"])),
    "cbor-chunked-getwork": call(chunked([b"get", b"work"])),
    "cbor-chunked-nested-maps": b"\xa1\x61a\xa1\x61b" + call(chunked([b"mining.", b"submit"])),
    "cbor-chunked-top-level": chunked([b"mining.", b"subscribe"]),
    # msgpack ext: a type byte between the length and the name, any type number
    "msgpack-ext8": msgext({"id": 1, "method": "mining.authorize", "params": []}),
    "msgpack-ext8-printable-type": mp_call(b"\xc7\x0dAmining.submit"),
    "msgpack-ext8-negative-type": mp_call(b"\xc7\x0d\xffmining.submit"),
    "msgpack-ext8-getwork": mp_call(b"\xc7\x07Agetwork"),
    "msgpack-ext16": mp_call(b"\xc8\x00\x0bAsubmitblock"),
    "msgpack-ext32": mp_call(b"\xc9\x00\x00\x00\x0bAsubmitblock"),
    "msgpack-fixext16-full": mp_call(_ext(SUB, 0x41)),
    "msgpack-fixext16-nul-padded": mp_call(_ext(b"mining.submit\x00\x00\x00", 0x41)),
    "msgpack-fixext16-space-padded": mp_call(_ext(b"mining.notify   ", 0x41)),
    "msgpack-fixext16-lead-padded": mp_call(_ext(b"   eth_getWork  ", 0x41)),
    "msgpack-fixext8-getwork": mp_call(_ext(b"getwork ", 0x41)),
    # msgpack's other string and binary forms
    "msgpack-bin8": mp_call(b"\xc4\x0bsubmitblock"),
    "msgpack-bin16": mp_call(b"\xc5\x00\x0bsubmitblock"),
    "msgpack-bin32": mp_call(b"\xc6\x00\x00\x00\x0bsubmitblock"),
    "msgpack-str16": mp_call(b"\xda\x00\x0bsubmitblock"),
    "msgpack-str32": mp_call(b"\xdb\x00\x00\x00\x0bsubmitblock"),
    "msgpack-capitals": pack({"id": 1, "method": "MINING.SUBSCRIBE"}),
    "msgpack-str8-padded": mp_call(b"\xd9\x20mining.submit" + b" " * 19),
    # CBOR definite strings in every length form, text and bytes
    "cbor-bytes-short": call(_head(2, 11) + b"submitblock"),
    "cbor-text-1byte": call(_head(3, 11, 1) + b"submitblock"),
    "cbor-text-2byte": call(_head(3, 11, 2) + b"submitblock"),
    "cbor-text-4byte": call(_head(3, 11, 4) + b"submitblock"),
    "cbor-bytes-1byte": call(_head(2, 11, 1) + b"submitblock"),
    "cbor-bytes-2byte": call(_head(2, 11, 2) + b"submitblock"),
    # BSON binary (subtype 0, and a user-defined one)
    "bson-binary": b"\x05method\x00" + struct.pack("<i", 11) + b"\x00submitblock",
    "bson-binary-user": b"\x05method\x00" + struct.pack("<i", 11) + b"\x80submitblock",
    # protobuf lengths written as non-minimal varints (decoders accept them)
    "protobuf-varint-2": b"\x08\x01\x12\x8d\x00mining.submit",
    "protobuf-varint-4": b"\x08\x01\x12\x8d\x80\x80\x00mining.submit",
    # other standard libraries' strings
    "ion-string": b"\xe0\x01\x00\xea\xd5\x87getwork",
    "smile-tiny-ascii": b":)\n\x03\xfa\x85method\x46getwork\xfb",
    "flatbuffers-le32": b"\x0c\x00\x00\x00\x08\x00\x0c\x00\x07\x00\x00\x00getwork\x00",
    "uint16-le-framing": b"\x01\x07\x00getwork\x02\x00\x00",
    "pickle-binunicode": b"\x80\x04\x95\x20\x00\x00\x00\x00\x00\x00\x00}\x94X\x0b\x00\x00\x00submitblock\x94.",
    # a bare mining name after a byte that text does not hold
    "bare-after-nul": b"\x00\x00\x00\x13\x00mining.subscribe\x00",
    "bare-after-control": b"\x00\x0fmining.subscribe\x00",
    "bare-after-non-utf8": b"\x93\x85mining.notify\x01",
}

NEGATIVES = {
    "cjk-prose": "调用mining.subscribe方法，然后mining.submit提交。".encode(),
    "accented-prose": "Appelez « mining.subscribe » puis é mining.submit.".encode(),
    "cjk-fixstr-byte": "发送mining.subscribe".encode().replace("送".encode(), b"\xe9\x80\xb0"),
    "cjk-ion-byte": "发送mining.subscribe".encode().replace("送".encode(), b"\xe9\x80\x90"),
    "arabic-fixext-bytes": "اطلب mining.subscribe".encode().replace(b" ", b"\xd8\xa8"),
    "wrong-length-not-bare": b"\x00\x0fgetblocktemplate\x00",
    "chunked-longer-name": call(chunked([b"mining.s", b"ubscribex"])),
    "chunked-glued-before": call(chunked([b"xmining.s", b"ubscribe"])),
    "chunked-other-byte": call(chunked([b"mining.s", b"ub-scribe"])),
    "chunked-benign-login": call(chunked([b"lo", b"gin"]), cbor({"params": {"user": "alice"}})),
    "chunked-not-ended": b"\x7f\x68mining.s\x68ubscribe",
    "underscore-glued": b"\x00\x01_mining.subscribe\xff\x02",
    "ext8-wrong-length": mp_call(b"\xc7\x0eAmining.submit"),
    "fixext16-other-padding": mp_call(_ext(b"mining.submitxyz", 0x41)),
    "text-tab-before": b"Methods:\n\tgetwork\n\tsubmitblock\n",
    "random-bytes": random.Random(4).randbytes(64 * 1024),
}


@pytest.mark.parametrize("name", sorted(POSITIVES))
def test_finds_each_shape(name: str) -> None:
    found = feed_stream(binrpc.detect, POSITIVES[name])
    assert found is not None, name
    assert (found.category, found.protocol, found.detector) == (Category.MINING, binrpc.PROTOCOL, binrpc.NAME)


@pytest.mark.parametrize("name", sorted(POSITIVES))
def test_finds_each_shape_from_the_pool(name: str) -> None:
    assert feed_stream(binrpc.detect, b"\x00" * 4, POSITIVES[name]) is not None


@pytest.mark.parametrize("name", sorted(NEGATIVES))
def test_ignores(name: str) -> None:
    assert feed_stream(binrpc.detect, NEGATIVES[name]) is None


SPLIT = ["cbor-chunked-ones", "cbor-chunked-bytes", "cbor-chunked-empty", "msgpack-ext8", "msgpack-fixext16-nul-padded",
         "msgpack-fixext16-lead-padded", "bson-binary", "bare-after-nul", "cbor-chunked-padded"]  # fmt: skip


@pytest.mark.parametrize("name", SPLIT)
def test_the_name_across_two_packets(name: str) -> None:
    stream = b"\x93\x01\x02\x03" * 30 + POSITIVES[name]
    results = feed_every_split(binrpc.detect, stream)
    assert all(found is not None for found in results), [i for i, found in enumerate(results) if found is None]
    assert len({found.evidence for found in results if found is not None}) == 1


@pytest.mark.parametrize("name", SPLIT)
def test_the_call_over_many_segments(name: str) -> None:
    """One byte a segment (the engine re-runs the detector at each): found, with the evidence of the whole."""
    stream = b"\x00" * 100 + POSITIVES[name]
    inspector = FlowInspector(META, (binrpc.detect,))
    for index in range(len(stream)):
        inspector.feed_stream(True, stream[index : index + 1])
    found = inspector.close()
    assert found is not None
    assert found == feed_stream(binrpc.detect, stream)


def test_a_chunked_name_in_a_long_flow_after_binary_bytes() -> None:
    """Past the search's overlap and after earlier cut strings: the chunk search resumes where the bytes cut one."""
    noise = bytes(range(256)) * 40  # every byte value: ``ff``s, heads, runs
    stream = noise + call(chunked(_pieces(b"mining.submit", 2)))
    inspector = FlowInspector(META, (binrpc.detect,))
    for index in range(0, len(stream), 7):
        inspector.feed_stream(True, stream[index : index + 7])
    assert inspector.close() is not None


def test_xmrig_words_in_chunked_strings() -> None:
    login = cbor({"id": 1, "method": "login", "params": {"login": "wallet", "pass": "x", "agent": "XMRig/6.21.0"}})
    split = b"\xa3" + chunked([b"lo", b"gin"]) + b"\x01" + chunked([b"pa", b"ss"]) + b"\x61x"
    split += chunked([b"ag", b"ent"]) + b"\x61x"
    assert feed_stream(binrpc.detect, login) is not None
    assert feed_stream(binrpc.detect, split) is not None
    assert feed_stream(binrpc.detect, b"\xa1" + chunked([b"lo", b"gin"]) + b"\x61x") is None  # no keys


def test_incremental_equals_a_fresh_view() -> None:
    """At every prefix of a stream holding several shapes, the incremental answer is a fresh view's."""
    stream = (b"\x00" * 70 + POSITIVES["cbor-chunked-ones"] + b"\x01" * 70 + POSITIVES["msgpack-ext8"])[:600]
    grown = FlowView(META)
    for index in range(0, len(stream), 5):
        grown.client = stream[: index + 5]
        fresh = FlowView(META, grown.client)
        assert binrpc.detect(grown) == binrpc.detect(fresh), index


def test_a_long_run_of_heads_stays_linear() -> None:
    """Heads of chunked strings everywhere (``_a`` repeated) and a ``ff``: searched once each, quickly found none."""
    stream = b"_a" * 30000 + b"\xff"
    assert feed_stream(binrpc.detect, stream) is None
    stream = b"\x7fa" * 30000 + b"\xff"
    assert feed_stream(binrpc.detect, stream) is None


def test_evidence_is_the_encoded_name() -> None:
    found = feed_stream(binrpc.detect, POSITIVES["cbor-chunked-halves"])
    assert isinstance(found, Finding)
    assert "mining.s" in found.evidence and "ubscribe" in found.evidence
