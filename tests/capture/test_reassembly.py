"""TCP reassembly: in-order delivery through retransmission, reordering, overlap, wrap-around and gaps."""

from __future__ import annotations

import random

import pytest

from egress.capture.reassembly import MAX_HELD_SEGMENTS, TcpStream

DATA = bytes(range(256)) * 8


def _segments(start: int, size: int) -> list[tuple[int, bytes]]:
    return [((start + offset) & 0xFFFFFFFF, DATA[offset : offset + size]) for offset in range(0, len(DATA), size)]


def _deliver(stream: TcpStream, segments: list[tuple[int, bytes]]) -> bytes:
    return b"".join(stream.add(seq, data) for seq, data in segments)


@pytest.mark.parametrize("start", [1000, 0xFFFFFF00], ids=["plain", "wraps"])
def test_in_order(start: int) -> None:
    stream = TcpStream()
    stream.syn(start - 1)
    assert _deliver(stream, _segments(start, 100)) == DATA


@pytest.mark.parametrize("seed", range(5))
def test_reordered_and_retransmitted(seed: int) -> None:
    segments = _segments(5000, 64)
    shuffled = segments[1:] + segments[:1]  # all held until the first arrives
    rng = random.Random(seed)
    rng.shuffle(shuffled)
    shuffled += rng.sample(segments, 5)  # duplicates
    stream = TcpStream()
    stream.syn(4999)
    assert _deliver(stream, shuffled) == DATA


def test_overlapping_retransmission_delivers_only_new_bytes() -> None:
    stream = TcpStream()
    stream.syn(99)
    assert stream.add(100, DATA[:50]) == DATA[:50]
    assert stream.add(120, DATA[20:80]) == DATA[50:80]
    assert stream.add(100, DATA[:80]) == b""


def test_mid_connection_start_takes_first_segment_as_origin() -> None:
    stream = TcpStream()
    assert stream.add(777, b"abc") == b"abc"
    assert stream.add(780, b"def") == b"def"


def test_a_gap_that_never_fills_is_skipped_after_the_hold_limit() -> None:
    stream = TcpStream()
    stream.syn(0)
    stream.add(1, b"x")
    out = b""
    for index in range(MAX_HELD_SEGMENTS + 1):
        out += stream.add(100 + index * 10, b"y" * 10)
    assert out == b"y" * 10 * (MAX_HELD_SEGMENTS + 1)
