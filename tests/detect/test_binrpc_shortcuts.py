"""binrpc's search for ASN.1 BER constructed strings takes two shortcuts, and each must be a shortcut and nothing
more: at every prefix of a direction, grown step by step, the answer and the XMRig words met are those of walking
every head that `binrpc._BER_HEAD` finds from the window's start, as before them.

- What a shorter prefix settled is kept (`binrpc._BerRead`): a longer prefix walks only the heads whose answer
  may have changed (those within a head's reach of the old end, and those whose walk met it), not every head of
  the last `binrpc._BER_SPAN` bytes again.
- Bytes without a primitive piece holding a letter (`binrpc._BER_LETTERED`) are not searched for heads: no string
  there joins to a name or a word.

Streams are made of the pieces that matter to the walk (constructed heads in both length forms and nested, empty
pieces of every length form, end-of-contents, names in pieces and in any case, XMRig's words, long filler that
moves the window), cut anywhere; and of the corpus's flows and red team 6's calls. The checks fail when either
shortcut is made wrong (`test_the_memo_is_needed`, `test_a_narrower_gate_is_caught`).
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress.detect import binrpc, jsonrpc
from tests.budget import examples
from tests.detect import seeds
from tests.security.redteam_ber_kit import answer, call


def piece(raw: bytes, tag: int = 0x04, long: bool = False) -> bytes:
    return bytes([tag, 0x81, len(raw)] if long else [tag, len(raw)]) + raw


NAME = piece(b"mining.s") + piece(b"ubscribe")
LONG = piece(b"mining.s", long=True) + piece(b"ubscribe", long=True)
TOKENS = [
    b"\x2c\x80", b"\x24\x80", b"\x36\x80", b"\xa1\x80", b"\x2c", b"\x24", b"\x30\x80", b"\x81", b"\x82", b"\x82\x00",
    b"\x04", b"\x0c", b"\x16", b"\x00", b"\x00\x00", b"\x01", b"\x02", b"\x03", b"\x08", b"\x10", b"\x40",
    b"\x04\x00", b"\x04\x81\x00", b"\x04\x82\x00\x00", b"m", b"ining.", b"mining.s", b"ubscribe", b"job", b"login",
    piece(b"mining.s"), piece(b"ubscribe"), piece(b"jo"), piece(b"b"), piece(b""), piece(b"getw", 0x0C),
    piece(b"ork", 0x16), b"\x2c\x80" + NAME + b"\x00\x00", b"\x2c\x10" + NAME, b"\x24\x80\x2c\x80" + NAME,
    b"\x2c\x80" + piece(b"lo") + piece(b"gin") + b"\x00\x00", b"\x00" * 200, b"A" * 300, b"\x04" * 40,
    piece(b"mining.s", long=True), piece(b"ubscribe", long=True), piece(b"\x00 MINING.S"), piece(b"UBSCRIBE"),
    piece(b"\x00\x00.9_"), piece(b"2c"), b"\x04\x82\x00\x08mining.s", piece(b"\x00 mining"), piece(b".submit"),
    b"\x2c\x80\x04\x41" + b"\x00" * 65, b"\x2c\x80" + LONG + b"\x00\x00",
    b"\x2c\x81\x16" + LONG, b"\x24\x82\x00\x1a\x2c\x80" + LONG + b"\x00\x00",
]  # fmt: skip
streams = st.lists(st.sampled_from(TOKENS) | st.binary(max_size=6), max_size=50).map(b"".join)


def every_head(data: bytes, start: int, words: dict[bytes, tuple[int, int]]) -> tuple[int, int]:
    """`binrpc._constructed` without its shortcuts: every head from ``start`` walked."""
    return binrpc._walk_heads(data, [match.start() for match in binrpc._BER_HEAD.finditer(data, start)], words, [])


def grown_equals_whole(stream: bytes, points: list[int], memo: bool = True) -> None:
    """Feed the prefixes ending at ``points`` as `binrpc._side` does, with the shortcuts and without (``memo``
    False drops what the memo settled about walks that met the end: the test must then fail somewhere)."""
    whole_words: dict[bytes, tuple[int, int]] = {}
    grown_words: dict[bytes, tuple[int, int]] = {}
    read = binrpc._BerRead()
    upto = 0
    for point in points:
        if point <= upto:
            continue
        prefix = stream[:point]
        start = max(upto - binrpc._BER_SPAN, 0)
        whole = every_head(prefix, start, whole_words)
        grown = binrpc._constructed(prefix, start, grown_words, read)
        if not memo:
            read.pending = []
        assert grown == whole, (point, prefix[-80:])
        assert grown_words == whole_words, (point, prefix[-80:])
        if whole[0] >= 0:  # found: `_side` drops the memo
            return
        upto = point


def cuts(data: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(1, max(len(data), 1)), max_size=16).map(lambda points: sorted({*points, len(data)}))


@settings(max_examples=examples(400), deadline=None)
@given(streams, st.data())
def test_a_direction_grown_step_by_step_reads_as_walking_every_head(stream: bytes, data: st.DataObject) -> None:
    grown_equals_whole(stream, data.draw(cuts(stream)))


@settings(max_examples=examples(200), deadline=None)
@given(streams)
def test_a_direction_grown_byte_by_byte_reads_as_walking_every_head(stream: bytes) -> None:
    grown_equals_whole(stream, list(range(1, len(stream) + 1)))


CALLS = [call(1, "mining.subscribe", ["cpuminer/2.5.1"], mode) for mode in ("seg8", "seg1", "definite")]
CALLS += [answer(1, "mining.notify", mode) for mode in ("seg8", "seg1", "definite")]
CALLS += [b"\x30\x80\x02\x01\x01\x2c\x80" + LONG + b"\x00\x00", b"\x02\x01\x01\x2c\x81\x16" + LONG]


def test_red_team_calls_and_the_corpus_read_the_same_grown() -> None:
    """Every corpus flow's directions (and red team 6's calls after binary filler) grown in steps of 60 to 1,260
    bytes, and byte by byte over their first 1,500 bytes."""
    flows = [side for seed in seeds.corpus_seeds().streams for side in (seed.client, seed.server) if side]
    flows += [b"\x01" * 600 + each for each in CALLS]
    assert len(flows) > 20
    for number, flow in enumerate(flows):
        step = (number % 7) * 200 + 60
        grown_equals_whole(flow[: jsonrpc.SCAN_LIMIT], [*range(1, len(flow), step), len(flow)])
        grown_equals_whole(flow[:1500], list(range(1, min(len(flow), 1500) + 1)))


def test_a_head_after_the_last_lettered_piece_is_looked_for_again() -> None:
    """A head that no piece with a letter follows yet (one comes before it) must be looked for again once its own
    pieces arrive: a head passed for good at the first prefix would be lost. (It fails for a bound of the head
    search at the last such piece that forgets the heads after it: such a bound was tried, and dropped as it cost
    more instructions than it saved.)"""
    stream = piece(b"xy") + b"\x00" * 20 + b"\x2c\x80" + piece(b"\x00\x00") * 10 + NAME + b"\x00\x00"
    cut = len(stream) - len(NAME) - 2
    grown_equals_whole(stream, [cut, len(stream)])
    grown_equals_whole(stream, list(range(1, len(stream) + 1)))
    assert every_head(stream, 0, {})[0] == 24


def test_the_memo_is_needed() -> None:
    """The test above can fail: without the heads whose walk met the end, a name cut by a prefix is lost."""
    stream = b"\x01" * 600 + CALLS[0]
    try:
        grown_equals_whole(stream, list(range(1, len(stream) + 1)), memo=False)
    except AssertionError:
        return
    raise AssertionError("forgetting the unsettled heads went unnoticed")


def gate(tail: bytes, tags: tuple[bytes, ...] = binrpc._BER_PIECE_TAGS) -> tuple[tuple[bytes, re.Pattern[bytes]], ...]:
    return tuple((tag, re.compile(re.escape(tag) + tail)) for tag in tags)


def test_a_narrower_gate_is_caught() -> None:
    """The checks above fail when the gate passes a piece it must not: one whose letters follow NULs or spaces
    (padding before the name), one in the long length form, one in upper case, one of an IA5String. (The generated
    streams mostly hold some other piece the gate takes: these are the streams where it is the only one.)"""
    exact = binrpc._BER_LETTERED
    assert gate(exact[0][1].pattern[1:]) == exact
    padded = b"\x01\x2c\x80" + piece(b"\x00 mining") + piece(b".submit") + b"\x00\x00"
    for narrower, stream in (
        (gate(rb"[\x01-\x40][A-Za-z]"), padded),
        (gate(rb"[\x01-\x40][\x00 .0-9_]*[A-Za-z]"), b"\x01\x2c\x80" + LONG + b"\x00\x00"),
        (gate(rb"[\x01-\x40][\x00 .0-9_]*[a-z]"), b"\x01\x2c\x80" + piece(b"GETW") + piece(b"ORK") + b"\x00\x00"),
        (
            gate(exact[0][1].pattern[1:], (b"\x04", b"\x0c")),
            b"\x01\x2c\x80" + piece(b"getw", 0x16) + piece(b"ork", 0x16) + b"\x00\x00",
        ),
    ):
        grown_equals_whole(stream, list(range(1, len(stream) + 1)))
        binrpc._BER_LETTERED = narrower  # type: ignore[misc]
        try:
            with pytest.raises(AssertionError):
                grown_equals_whole(stream, list(range(1, len(stream) + 1)))
        finally:
            binrpc._BER_LETTERED = exact  # type: ignore[misc]
