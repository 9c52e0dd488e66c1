"""The compiled search of packed (egress/detect/_packed.c) against its pure twin (packed._search_pure): the same
names for every unit-test input, every flow of the shared corpora, random and mutated bytes, at every split; a
stale or foreign build is refused; an error in the search blocks the flow (fail closed)."""

from __future__ import annotations

import hashlib
import pathlib
import random
import types
import zlib
from collections.abc import Callable

import pytest

from egress.detect import packed, packedfast
from egress.detect.base import MORE, Category, FlowView, Result
from egress.detect.registry import DetectorSet, _NoDns
from egress.scanner import FileStats, Scanner
from tests.corpus import CORPUS, TUNNELS, needs_corpus, needs_tunnels
from tests.detect.feeding import feed_every_split, feed_stream
from tests.detect.test_packed import _png, _protobuf, _text, _tls, gsm, msb, pack, stream
from tests.security import redteam_uper_kit as kit

COMPILED = packedfast.COMPILED
compiled_only = pytest.mark.skipif(COMPILED is None, reason="egress.detect._packed is not built (no C compiler)")


def same(data: bytes) -> dict[bytes, int]:
    """The compiled search's answer on ``data``, after checking it is the pure one's."""
    assert COMPILED is not None
    pure = packed.search(data, False)
    compiled = packed.search(data, COMPILED)
    assert compiled == pure, data.hex()
    return compiled


def same_at_every_split(data: bytes) -> None:
    for at in range(len(data) + 1):
        same(data[:at])
        same(data[at:])


def _planted(rng: random.Random, size: int) -> bytes:
    """Random bytes with a vocabulary name packed in them at a random bit offset: 7-bit (either bit order) or as
    6- or 5-bit codes of an alphabet of a random base."""
    word = rng.choice(packed.VOCABULARY)
    kind = rng.choice(("msb", "gsm", "six", "five"))
    lead = rng.randrange(8 * size)
    noise = format(int.from_bytes(rng.randbytes(size + 40)), f"0{8 * (size + 40)}b")
    if kind == "gsm":
        return rng.randbytes(lead // 8) + gsm(word, lead % 8) + rng.randbytes(rng.randrange(4))
    width = {"msb": 7, "six": 6, "five": 5}[kind]
    base = 0 if width == 7 else rng.randrange(0x40, 0x62)
    bits = noise[:lead] + "".join(f"{(byte - base) % (1 << width):0{width}b}" for byte in word) + noise[lead:]
    return pack(bits[: 8 * size + 7 * len(word)])


def _mutated(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        at = rng.randrange(len(out))
        out[at] ^= 1 << rng.randrange(8)
    return bytes(out)


@compiled_only
@pytest.mark.parametrize("schema", sorted(kit.SCHEMAS))
@pytest.mark.parametrize("framing", ("binary", "text"))
def test_the_kits_streams_at_every_split(schema: str, framing: str) -> None:
    data = stream(schema, framing)
    assert same(data)
    same_at_every_split(data[:600])
    same_at_every_split(data[-300:])


@compiled_only
@pytest.mark.parametrize("lead", range(8))
def test_every_name_at_every_offset_in_every_width(lead: int) -> None:
    for word in packed.VOCABULARY:
        found = same(pack("1" * lead + msb(word)))
        assert (word in found) == (word in packed._COMPILED_WORDS)
        same(gsm(word, lead))
        for width in (6, 5):
            codes = "".join(f"{(byte - 0x60) % (1 << width):0{width}b}" for byte in word)
            same(pack("0" * lead + codes + "1" * lead))
        same_at_every_split(pack("01" * lead + msb(word)))


@compiled_only
@pytest.mark.parametrize("kind", ("text", "zlib", "png", "protobuf", "tls"))
def test_the_benign_inputs(kind: str) -> None:
    rng = random.Random(kind)
    makers: dict[str, Callable[[], bytes]] = {
        "text": _text,
        "zlib": lambda: zlib.compress(_text()),
        "png": lambda: _png(rng),
        "protobuf": lambda: _protobuf(rng),
        "tls": lambda: _tls(rng),
    }
    data = makers[kind]()
    for at in range(0, len(data), 16 * 1024):
        same(data[at : at + 16 * 1024])
    same_at_every_split(data[:300])


@compiled_only
def test_random_planted_and_mutated_bytes() -> None:
    rng = random.Random(15)
    found = 0
    for _ in range(3000):
        size = rng.choice((3, 4, 5, 7, 9, 16, 24, 31, 40, 64, 100, 257, 1460))
        data = _planted(rng, size) if rng.random() < 0.6 else rng.randbytes(size)
        found += bool(same(data))
        same(_mutated(rng, data))
    assert found > 1000  # the planted names are found (and compared), not only empty answers
    for size in range(0, 48):
        same_at_every_split(_planted(rng, size + 3))
    same(rng.randbytes(packed.LIMIT))


@compiled_only
def test_the_detectors_answer_is_the_same_fed_at_every_split(monkeypatch: pytest.MonkeyPatch) -> None:
    data = stream("five")[:400]
    compiled = feed_every_split(packed.detect, data)
    monkeypatch.setattr(packedfast, "_chosen", [None])
    assert packedfast.wanted() is None
    assert feed_every_split(packed.detect, data) == compiled


class _Collect:
    """A detector that only looks: each TCP flow's two directions once it is decided."""

    def __init__(self) -> None:
        self.flows: list[tuple[bytes, bytes]] = []
        self.path = ""

    def __call__(self, view: FlowView) -> Result:
        if not view.complete:
            return MORE
        if view.client or view.server:
            self.flows.append((view.client, view.server))
        return None


@compiled_only
@pytest.mark.corpus
@needs_corpus
@needs_tunnels
def test_every_flow_of_the_shared_corpora() -> None:
    collect = _Collect()
    detectors = DetectorSet((collect,), (), (), _NoDns)
    paths = sorted(p for root in (CORPUS, TUNNELS) for p in root.rglob("*") if p.suffix in (".pcap", ".pcapng"))
    assert len(paths) > 50
    for path in paths:
        for _ in Scanner(detectors).scan(str(path), FileStats(str(path))):
            pass
    assert len(collect.flows) > 300
    for client, server in collect.flows:  # their names are text, which holds no packed name: the answers are empty
        for data in (client[: packed.LIMIT], server[: packed.LIMIT]):
            same(data)
            for at in range(packed.OVERLAP, min(len(data), 4096), 1460):  # the windows the detector searches
                same(data[at - packed.OVERLAP :])


def test_a_stale_or_foreign_build_is_refused() -> None:
    source = pathlib.Path(packed.__file__).with_name("_packed.c")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert packedfast.stale(types.SimpleNamespace(ABI=packedfast.ABI, SOURCE=digest), digest) is None
    assert "another version" in str(packedfast.stale(types.SimpleNamespace(ABI=packedfast.ABI, SOURCE="0"), digest))
    assert "ABI" in str(packedfast.stale(types.SimpleNamespace(ABI=packedfast.ABI + 1, SOURCE=digest), digest))
    if COMPILED is not None:
        assert packedfast.stale(COMPILED, digest) is None


def test_the_pure_search_is_chosen_with_the_scans_pure_path() -> None:
    try:
        packedfast.choose(False)
        assert packedfast.wanted() is None
        packedfast.choose(True)
        assert packedfast.wanted() is COMPILED
    finally:
        packedfast.choose(True)


@pytest.mark.parametrize("error", (MemoryError, ValueError, RuntimeError))
def test_an_error_in_the_compiled_search_blocks_the_flow(monkeypatch: pytest.MonkeyPatch, error: type) -> None:
    """Fail closed: whatever the compiled search raises (MemoryError where Python would), the flow is a finding,
    never forwarded unsearched."""

    def broken(data: bytes) -> tuple[int, int, int]:
        raise error("broken")

    monkeypatch.setattr(packedfast, "wanted", lambda: types.SimpleNamespace(search=broken))
    finding = feed_stream(packed.detect, random.Random(3).randbytes(2000))
    assert finding is not None
    assert finding.category is Category.MINING
    assert "search failed" in finding.evidence


@compiled_only
def test_the_compiled_search_refuses_what_is_not_a_buffer() -> None:
    assert COMPILED is not None
    with pytest.raises(TypeError):
        COMPILED.search("text")


@compiled_only
@pytest.mark.parametrize("width", (6, 5))
def test_a_run_ending_on_the_last_character_read(width: int) -> None:
    """A letter run whose last character is the last one unpacked (read in the zero bits after the data: its code
    is 0 in an alphabet based at its own letter) is found by both searches."""
    rng = random.Random(width)
    run, _bits = next(iter(packed._DIFFERENCES[width].values()))
    planted = 0
    for size in range(8, 80):
        offset = width - 1  # the last stream searched
        blocks = -((offset - 8 * size) // (8 * width))
        first = offset + (8 * blocks - len(run)) * width
        codes = "".join(f"{(byte - run[-1]) % (1 << width):0{width}b}" for byte in run)
        noise = format(int.from_bytes(rng.randbytes(size)), f"0{8 * size}b")
        bits = noise[:first] + codes
        if first < 0 or "1" in bits[8 * size :]:
            continue
        planted += 1
        assert run in same(pack(bits[: 8 * size])), size
    assert planted > 10


def test_a_build_beside_the_source_is_not_refused() -> None:
    """A compiled module that exists but is stale would silently run the pure search (and skip the comparisons):
    in a source tree with a build, the build must be the one loaded."""
    built = list(pathlib.Path(packed.__file__).parent.glob("_packed.*.so"))
    if built:
        assert COMPILED is not None, f"{built[0]} is stale: rebuild (deploy/bootstrap.sh)"


def _runs_found(data: bytes, patterns: dict[int, tuple[bytes, ...]]) -> tuple[int, int]:
    """The 6- and 5-bit masks of ``patterns`` (per width) in ``data`` as `packed._search_pure` finds them: each
    width's characters of every offset joined with `packed._APART`, their `packed.differences` searched."""
    shifted = packed.shifts(data)
    masks = []
    for width in (6, 5):
        joined = packed._APART.join(packed.unpack(shifted, width, offset) for offset in range(width))
        steps = packed.differences(joined, width)
        masks.append(sum(1 << index for index, pattern in enumerate(patterns[width]) if steps.find(pattern) >= 0))
    return masks[0], masks[1]


@compiled_only
def test_short_patterns_are_found_alike_across_the_offsets_and_at_the_end() -> None:
    """The compiled search configured with patterns of 2 to 4 differences (found often: across the separators
    between two offsets' characters, in the zero bits after the data, at its first and last characters) against
    the pure search's steps, then configured back with packed's own patterns."""
    assert COMPILED is not None
    rng = random.Random(22)
    compared = 0
    try:
        for _ in range(300):
            patterns = {
                width: tuple(
                    bytes(rng.choice((0, 1, rng.randrange(1 << width))) for _ in range(rng.randrange(2, 5)))
                    for _ in range(rng.randrange(1, 20))
                )
                for width in (6, 5)
            }
            COMPILED.configure(packed._COMPILED_WORDS, patterns[6], patterns[5])
            for size in (1, 2, 3, 5, 6, 7, 11, 30, 31, 64, 65):
                for data in (rng.randbytes(size), bytes(size), bytes([rng.randrange(256)]) * size):
                    _words, six, five = COMPILED.search(data)
                    assert (six, five) == _runs_found(data, patterns), (data.hex(), patterns)
                    compared += bool(six or five)
    finally:
        COMPILED.configure(packed._COMPILED_WORDS, *packed._COMPILED_PATTERNS)
    assert compared > 5000  # found, not only empty answers
    same(b"\x00\x01" * 40)
