"""egress.proxy.mitm.payload: bodies decoded as a server decodes them, bounded; the pieces a server application
reads out of them."""

from __future__ import annotations

import gzip
import zlib

import brotli  # type: ignore[import-untyped]
import pytest
from backports import zstd

from egress.proxy.mitm import payload

BODY = b'{"id":1,"method":"mining.subscribe","params":[]}' * 3


@pytest.mark.parametrize(
    ("coding", "encoded"),
    [
        ("", BODY),
        ("identity", BODY),
        ("gzip", gzip.compress(BODY, mtime=0)),
        ("x-gzip", gzip.compress(BODY, mtime=0)),
        ("GZIP", gzip.compress(BODY, mtime=0)),
        ("deflate", zlib.compress(BODY)),
        ("deflate", zlib.compress(BODY, wbits=-15)),
        ("br", brotli.compress(BODY)),
        ("zstd", zstd.compress(BODY)),
        ("gzip, br", brotli.compress(gzip.compress(BODY, mtime=0))),
        ("br,zstd", zstd.compress(brotli.compress(BODY))),
    ],
)
def test_known_codings_are_undone_in_reverse_order(coding: str, encoded: bytes) -> None:
    assert payload.decode(encoded, coding) == payload.Decoded(BODY)


def test_concatenated_gzip_members_and_zstd_frames_decode_whole() -> None:
    assert payload.decode(gzip.compress(BODY, mtime=0) + gzip.compress(b"tail", mtime=0), "gzip").data == BODY + b"tail"
    assert payload.decode(zstd.compress(BODY) + zstd.compress(b"tail"), "zstd").data == BODY + b"tail"


@pytest.mark.parametrize(
    ("coding", "encoded", "why"),
    [
        ("bogus", BODY, "unknown content-encoding"),
        ("compress", BODY, "unknown content-encoding"),
        ("gzip", b"\x1f\x8b\x08\x00corrupt", "gzip body"),
        ("gzip", gzip.compress(BODY, mtime=0)[:-6], "truncated"),
        ("gzip", gzip.compress(BODY, mtime=0) + b"junk", "gzip body"),
        ("deflate", b"not deflate at all", "not deflate"),
        ("br", b"\xff\xff\xffnot brotli", "br body"),
        ("br", brotli.compress(BODY)[:-3], "br body"),
        ("zstd", b"not zstd", "zstd body"),
    ],
)
def test_a_body_that_cannot_be_read_as_declared_is_a_problem(coding: str, encoded: bytes, why: str) -> None:
    decoded = payload.decode(encoded, coding)
    assert decoded.problem is not None and why in decoded.problem


@pytest.mark.parametrize(
    ("coding", "compress"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("br", brotli.compress),
        ("zstd", zstd.compress),
    ],
)
def test_a_decompression_bomb_is_cut_off_at_the_bound(coding: str, compress: object) -> None:
    assert callable(compress)
    bomb = compress(b"\0" * 300_000)
    decoded = payload.decode(bomb, coding, limit=100_000)
    assert decoded.problem is not None and "more than 100000" in decoded.problem
    assert len(decoded.data) <= 100_001


def test_an_unknown_coding_keeps_the_raw_bytes_for_inspection() -> None:
    assert payload.decode(BODY, "x-custom").data == BODY


def test_multipart_parts_form_values_and_events_are_pieces() -> None:
    parts = b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\none\r\n--b\r\n\r\ntwo\r\n--b--\r\n'
    assert payload.pieces(parts, 'multipart/form-data; boundary="b"') == [b"one", b"two"]
    assert payload.pieces(b"a=1&b=%7B%22x%22%3A+1%7D", "application/x-www-form-urlencoded") == [b"1", b'{"x": 1}']
    events = b'event: job\r\ndata: {"a":\r\ndata: 1}\r\n\r\n: comment\ndata:two\n\n'
    assert payload.pieces(events, "text/event-stream; charset=utf-8") == [b'{"a":\n1}', b"two"]
    assert payload.pieces(BODY, "application/json") == []


def test_pieces_are_bounded() -> None:
    form = b"&".join(b"k%d=v" % i for i in range(500))
    assert len(payload.pieces(form, "application/x-www-form-urlencoded")) == payload.PIECES_MAX
