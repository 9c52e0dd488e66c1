"""egress.detect.codings: HTTP content codings undone as a server does, bounded; a cut stream decodes as far as it
goes when the caller says the body is a prefix."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable

import pytest

from egress.detect import codings

BODY = b'{"id":1,"method":"mining.subscribe","params":[]}\n' * 4

CODERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda data: gzip.compress(data, mtime=0),
    "deflate": zlib.compress,
}
if codings.brotli is not None:
    CODERS["br"] = codings.brotli.compress
if codings.zstd is not None:
    CODERS["zstd"] = codings.zstd.compress


@pytest.mark.parametrize("coding", sorted(CODERS))
def test_each_coding_is_undone(coding: str) -> None:
    assert codings.decode(CODERS[coding](BODY), coding) == codings.Decoded(BODY)


def test_codings_are_undone_last_applied_first() -> None:
    twice = zlib.compress(gzip.compress(BODY, mtime=0))
    assert codings.decode(twice, "gzip, deflate") == codings.Decoded(BODY)


@pytest.mark.parametrize("coding", sorted(CODERS))
def test_a_bomb_is_cut_at_the_bound_and_is_a_problem(coding: str) -> None:
    decoded = codings.decode(CODERS[coding](b"\0" * 500_000), coding, limit=10_000)
    assert decoded.problem is not None and "more than 10000" in decoded.problem
    assert len(decoded.data) <= 10_000


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_a_cut_body_decodes_as_far_as_it_goes_only_when_said_to_be_a_prefix(coding: str) -> None:
    coded = CODERS[coding](BODY)[:-12]
    whole = codings.decode(coded, coding)
    assert whole.problem is not None
    part = codings.decode(coded, coding, partial=True)
    assert part.problem is None and BODY.startswith(part.data) and b"mining.subscribe" in part.data


@pytest.mark.parametrize(
    ("coding", "raw", "why"),
    [
        ("compress", BODY, "unknown content-encoding"),
        ("gzip", b"\x1f\x8b\x08\x00corrupt", "gzip body"),
        ("gzip", gzip.compress(BODY, mtime=0) + b"junk", "gzip body"),
        ("deflate", b"no deflate here", "not deflate"),
    ],
)
def test_a_body_not_as_declared_is_a_problem_with_its_bytes_kept(coding: str, raw: bytes, why: str) -> None:
    decoded = codings.decode(raw, coding)
    assert decoded.problem is not None and why in decoded.problem
    assert decoded.data


def test_identity_is_no_coding() -> None:
    assert codings.decode(BODY, "identity") == codings.Decoded(BODY)
    assert codings.decode(BODY, "") == codings.Decoded(BODY)
