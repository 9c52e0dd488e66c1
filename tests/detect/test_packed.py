"""Tests for packed: pool names as 7-, 6- or 5-bit characters at any bit offset (red team 6's unaligned PER and
the variants past it), what counts as evidence, and benign bytes that must stay clean."""

from __future__ import annotations

import bz2
import gzip
import lzma
import pathlib
import random
import struct
import zlib

import pytest

from egress.detect import packed
from egress.detect.base import Category
from tests.detect.feeding import feed_every_split, feed_stream
from tests.security import redteam_uper_kit as kit


def bits_of(data: bytes) -> str:
    return "".join(f"{byte:08b}" for byte in data)


def pack(bits: str) -> bytes:
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))


def msb(text: bytes, width: int = 7, base: int = 0) -> str:
    """``text``'s characters as ``width``-bit codes (less ``base``), most significant bit first."""
    return "".join(f"{byte - base:0{width}b}" for byte in text)


def gsm(text: bytes, lead: int = 0) -> bytes:
    """``text`` as GSM 7-bit septets (3GPP TS 23.038 §6.1.2.1: least significant bit first), after ``lead``
    bits of filler."""
    value, size = 0, lead
    for byte in text:
        value |= byte << size
        size += 7
    return value.to_bytes((size + 7) // 8, "little")


def stream(schema: str, framing: str = "binary") -> bytes:
    return b"".join(
        kit.framed(kit.call(ident, method, params, schema), framing) for ident, method, params in kit._CALLS
    )


@pytest.mark.parametrize("width", packed.WIDTHS)
@pytest.mark.parametrize("offset", range(8))
def test_unpack_reads_every_character_at_every_offset(width: int, offset: int) -> None:
    data = random.Random(width * 8 + offset).randbytes(61)
    bits = bits_of(data)[offset:]
    expected = bytes(int(bits[i : i + width], 2) for i in range(0, len(bits) - width + 1, width))
    got = packed.unpack(packed.shifts(data), width, offset)
    assert got[: len(expected)] == expected
    assert len(got) - len(expected) <= 8  # the last block's characters in the padding


def test_differences_are_modular() -> None:
    assert packed.differences(bytes([1, 5, 2, 63]), 6) == bytes([4, 61, 61])
    assert packed.differences(b"\x07", 5) == b""


@pytest.mark.parametrize("lead", range(8))
@pytest.mark.parametrize("word", [b"mining.subscribe", b"mining.notify", b"eth_submitLogin", b"getblocktemplate"])
def test_a_7_bit_name_is_found_at_every_bit_offset_in_either_bit_order(lead: int, word: bytes) -> None:
    noise = random.Random(lead).randbytes(9)
    per = pack(bits_of(noise)[:lead] + msb(word) + bits_of(noise))
    assert packed.search(noise + per)[word] == 7 * len(word)
    assert packed.search(noise + gsm(word, lead) + noise)[word] == 7 * len(word)


@pytest.mark.parametrize("width", (6, 5))
@pytest.mark.parametrize("base", (0, 1, 5))
@pytest.mark.parametrize("lead", range(0, 8, 3))
def test_a_letter_run_is_found_in_any_alphabet_where_the_letters_follow_each_other(
    width: int, base: int, lead: int
) -> None:
    codes = msb(b"subscribe", width, 0x61 - base) + msb(b"authorize", width, 0x61 - base)
    found = packed.search(b"\x00\x81" + pack("1" * lead + codes))
    assert found == {b"subscribe": 8 * width, b"authorize": 8 * width}


@pytest.mark.parametrize("schema", sorted(kit.SCHEMAS))
@pytest.mark.parametrize("framing", ("binary", "text"))
def test_the_kits_calls_are_mining_in_every_schema(schema: str, framing: str) -> None:
    found = feed_stream(packed.detect, kit.TEXT_PREFIX + stream(schema, framing))
    assert found is not None and found.category is Category.MINING and found.protocol == packed.PROTOCOL


@pytest.mark.parametrize("schema", ("ia5", "six", "five"))
def test_the_answer_does_not_depend_on_where_the_stream_is_cut(schema: str) -> None:
    data = kit.NOTE + stream(schema)
    results = feed_every_split(packed.detect, data)
    assert {(found.category, found.protocol) if found else None for found in results} == {
        (Category.MINING, packed.PROTOCOL)
    }


def test_the_first_call_alone_decides_in_7_bits_two_long_runs_in_5() -> None:
    """One 7-bit Stratum method is 92 bits beyond chance; a 5-bit ``subscribe`` is 20, with ``authorize`` 40."""
    first = kit.framed(kit.call(1, "mining.subscribe", ["cpuminer/2.5.1"]), "binary")
    assert feed_stream(packed.detect, first) is not None
    five = [kit.framed(kit.call(i, method, params, "five"), "binary") for i, method, params in kit._CALLS]
    assert feed_stream(packed.detect, five[0]) is None
    assert feed_stream(packed.detect, five[0] + five[1]) is not None


def test_short_words_alone_are_not_evidence() -> None:
    """``login`` (35 bits) and ``job_id`` (42) together are 37 bits beyond chance: under the threshold; with
    ``target`` (42) the XMRig job is."""
    words = [b"login", b"job_id"]
    data = b"\x01\x02" + pack("".join(msb(word) + "1010101" for word in words))
    assert packed.search(data).keys() == set(words)
    assert feed_stream(packed.detect, data) is None
    more = b"\x01\x02" + pack("".join(msb(word) + "1010101" for word in [*words, b"target"]))
    assert feed_stream(packed.detect, more) is not None


def test_a_name_inside_a_longer_name_is_counted_once() -> None:
    assert packed.surprise({b"mining.submit": 91, b"submit": 42}) == 91 - packed.CHANCE_BITS
    assert packed.surprise({b"mining.submit": 91, b"nonce": 35}) == 91 + 35 - 2 * packed.CHANCE_BITS
    assert packed.surprise({b"job": 21}) == 0


def test_no_7_bit_name_packs_into_text_but_one_too_weak_alone() -> None:
    """The search skips a window of text: sound only while no name that could make a finding packs into bytes
    that are all text at some bit offset (the bytes it fills whole, in either bit order)."""
    text = set(packed._TEXT)
    evading = set()
    for word in packed.VOCABULARY:
        if 7 * len(word) < packed.MIN_BITS:
            continue
        for lead in range(8):
            for packing, core in (("per", msb(word)), ("gsm", "".join(f"{c:07b}"[::-1] for c in word))):
                bits = "?" * lead + core
                whole = [bits[i : i + 8] for i in range(0, len(bits) - 7, 8) if "?" not in bits[i : i + 8]]
                values = [int(b, 2) if packing == "per" else int(b[::-1], 2) for b in whole]
                if all(value in text for value in values):
                    evading.add(word)
    assert evading == {b"submit"}
    assert 7 * len(b"submit") - packed.CHANCE_BITS < packed.THRESHOLD


def _flows(data: bytes, size: int = 16 * 1024) -> list[bytes]:
    return [data[at : at + size] for at in range(0, len(data), size)]


def _text() -> bytes:
    return b"".join(path.read_bytes() for path in sorted(pathlib.Path(pathlib.__file__).parent.glob("*.py"))[:40])


def _png(rng: random.Random) -> bytes:
    pixels = b"".join(b"\x00" + bytes(rng.randrange(0, 64) for _ in range(300)) for _ in range(200))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    head = struct.pack(">IIBBBBB", 100, 200, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(pixels)) + chunk(b"IEND", b"")


def _protobuf(rng: random.Random) -> bytes:
    """Messages of varints, fixed64 and strings of words (the pool's among them, 8 bits a character)."""
    words = [b"login", b"submit", b"result", b"target", b"nonce", b"mining.subscribe", b"hello", b"agent"]
    out = bytearray()
    for _ in range(3000):
        out += bytes([0x08]) + bytes([rng.randrange(1, 127)])
        out += bytes([0x11]) + rng.randbytes(8)
        word = rng.choice(words)
        out += bytes([0x1A, len(word)]) + word
    return bytes(out)


def _tls(rng: random.Random) -> bytes:
    """Application data records: a header, then ciphertext."""
    return b"".join(b"\x17\x03\x03" + struct.pack(">H", 1400) + rng.randbytes(1400) for _ in range(200))


@pytest.mark.parametrize("kind", ("random", "zlib", "gzip", "bz2", "xz", "png", "protobuf", "tls"))
def test_benign_bytes_are_not_mining(kind: str) -> None:
    rng = random.Random(kind)
    text = _text()
    data = {
        "random": lambda: rng.randbytes(256 * 1024),
        "zlib": lambda: zlib.compress(text),
        "gzip": lambda: gzip.compress(text),
        "bz2": lambda: bz2.compress(text),
        "xz": lambda: lzma.compress(text),
        "png": lambda: _png(rng),
        "protobuf": lambda: _protobuf(rng),
        "tls": lambda: _tls(rng),
    }[kind]()
    assert len(data) > 16 * 1024
    for flow in _flows(data):
        assert feed_stream(packed.detect, flow, flow[::-1]) is None


def test_the_servers_bytes_count_with_the_clients_only() -> None:
    """A download holding packed names is not searched alone; a pool's answer adds to a client's call: an XMRig
    login's ``login`` and ``agent`` (30 bits beyond chance) with its job's ``job_id`` and ``target`` (44 more)."""
    push = kit.framed(kit.answer(1, "mining.notify"), "binary") * 3
    assert feed_stream(packed.detect, b"GET / HTTP/1.1\r\n\r\n", push) is None
    assert feed_stream(packed.detect, b"\x00\x01" + push) is not None
    login = b"\x00\x01" + pack(msb(b"login") + "1" + msb(b"agent"))
    job = b"\x00\x02" + pack(msb(b"job_id") + "0" + msb(b"target"))
    assert feed_stream(packed.detect, login) is None
    assert feed_stream(packed.detect, b"GET / HTTP/1.1\r\n\r\n", job) is None
    assert feed_stream(packed.detect, login, job) is not None


@pytest.mark.parametrize(
    "opening",
    (b"\x00" * 700, kit.TEXT_PREFIX + b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc", kit.NOTE * 20),
    ids=("nul-run", "text-then-hello-header", "text-lines"),
)
def test_the_calls_after_an_opening_judged_plain_are_mining(opening: bytes) -> None:
    """Red team 6's cases of the same class not made rows: a run of NUL bytes first, a printable opening then a
    TLS record and handshake header announcing a ClientHello whose record carries the PDUs."""
    found = feed_stream(packed.detect, opening + stream("ia5"))
    assert found is not None and found.detector == packed.NAME


@pytest.mark.parametrize("lead", (0, 3, 7))
def test_the_longest_name_is_found_wherever_the_segments_cut_it(lead: int) -> None:
    """`packed.OVERLAP` covers the longest name (27 characters, 189 bits): fed cut at every byte, after a
    search of the bytes before the cut, it is found."""
    word = max(packed.VOCABULARY, key=len)
    assert 7 * len(word) <= 8 * packed.OVERLAP
    data = bytes(range(0x80, 0xA0)) + pack("1" * lead + msb(word) + "1" * 9) + bytes(range(0x80, 0x90))
    results = feed_every_split(packed.detect, data)
    assert all(result is not None and word.decode() in result.evidence for result in results)
