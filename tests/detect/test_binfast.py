"""binrpc's compiled byte searches (egress/detect/_binfast.c) give what their pure twins give (`binrpc.pure_ber_heads`,
`binrpc.pure_breaks`): at every call a scan of both corpora makes, on every prefix of the
corpus's flows, on generated heads, pieces and breaks, mutated and random bytes; whole scans of both corpora find the
same with either; a stale build is refused and ``EGRESS_SCAN_PURE=1`` runs the pure twins."""

from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import subprocess
import sys
import types
from collections.abc import Iterator

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from egress.capture import hot
from egress.detect import binfast, binrpc
from tests.budget import examples
from tests.corpus import needs_corpus, needs_tunnels
from tests.detect import twins

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILT = binfast.COMPILED
compiled_only = pytest.mark.skipif(
    BUILT is None and os.environ.get("CI") != "true",
    reason="egress.detect._binfast is not built here (no C compiler): only the pure path runs",
)
TWINS = (
    ("ber_heads", "_ber_heads", binrpc.pure_ber_heads),
    ("breaks", "_breaks", binrpc.pure_breaks),
    ("anchored", "_anchored", binrpc.pure_anchored),
)
"""(the compiled function, binrpc's switched name, its pure twin)."""

PIECES = [
    *(bytes([tag]) for tag in (0x24, 0x2C, 0x32, 0x33, 0x36, 0x37, 0x39, 0x3C, 0x3D, 0x9F, 0xA0, 0xB5, 0xBF, 0xC0)),
    *(bytes([tag]) for tag in (0x04, 0x0C, 0x16, 0x05)),
    *(bytes([length]) for length in (0x00, 0x01, 0x02, 0x03, 0x04, 0x40, 0x41, 0x7F, 0x80, 0x81, 0x82, 0x83)),
    *(b"m", b"M", b"e", b"g", b"S", b"a", b"z", b" ", b".", b"_", b"0", b"9", b"\x00", b"mining.subscribe"),
    *(b"\xff", b"\x5f", b"\x7f", b"\x40", b"\x60", b"\x7b", b"\x7c", b"\x63job", b"\x81\x00", b"\x82\x00\x05"),
    *(b"MINING.", b"Eth_", b"bLoCk", b"getWork", b"minin", b"eth", b"bloc", b"getwor", b"b", b"E", b"G", b"\xc2"),
]
"""Every byte each search reads differently: the head's tags (and their neighbours), the pieces' and nested tags,
every length form and its bounds, a name's first letters, pads and digits, CBOR's heads, breaks and run bytes."""


def _agree(data: bytes, compiled: types.ModuleType, starts: Iterator[int] | None = None) -> None:
    size = len(data)
    for start in starts or iter({0, 1, size // 2, size - 9, size - 1, size, size + 1, -1, -5, -size - 1}):
        for name, _, pure in TWINS:
            assert getattr(compiled, name)(data, start) == pure(data, start), (name, data, start)


@pytest.mark.corpus
@needs_corpus
@needs_tunnels
@compiled_only
def test_every_call_a_scan_of_both_corpora_makes_is_answered_alike_and_the_findings_are_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Scanned with the pure twins, each call also asked of the compiled module (every answer compared), then
    scanned with the compiled module: the same findings, order and counts, file by file."""
    assert BUILT is not None
    pairs = [(switched, pure, getattr(BUILT, name)) for name, switched, pure in TWINS]
    heads, breaks, anchors = twins.corpora_scanned_alike(monkeypatch, binrpc, pairs)
    assert heads > 50 and breaks > 2_000 and anchors > 2_000, (
        heads,
        breaks,
        anchors,
    )  # the scan reads through them, not around them


@needs_corpus
@compiled_only
def test_every_prefix_of_the_corpus_flows_is_answered_alike() -> None:
    built = BUILT
    assert built is not None
    twins.each_prefix_and_window(lambda data: _agree(data, built), 600)


@needs_corpus
@compiled_only
def test_mutated_corpus_flows_are_answered_alike() -> None:
    """Corpus flows with heads, pieces, lengths and breaks put in at random places."""
    assert BUILT is not None
    for data in twins.mutated(PIECES, seed=15, rounds=6, most=24):
        _agree(data, BUILT)


@compiled_only
@settings(max_examples=examples(4000), deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=24).map(b"".join))
@example(b"\x24\x80\x04\x08mining.s\x04\x08ubscribe\x00\x00")  # X.690's pieces: a head, lettered pieces
@example(b"\xa3\x81\x04\x04\x81\x00\x2c\x82\x01\x00\x0c\x00")  # long length forms, an empty piece in 81 form
@example(b"\x36\x05\x24\x81\x02\x16\x24\x02\x2c")  # nested heads in each length form, cut at the end
@example(b"\x16\x82\x00\x05 ._9a\x0c\x81\x40\x00x\x04\x41a")  # lettered pieces; a length past the bound
@example(b"\x7f\x63job\xff\x5f\x40\x60\xff\x00\x00\x00\x00\x7b\xff\x7c\x00\x00\x00\x00\xff")  # breaks, not
def test_generated_heads_pieces_and_breaks_are_answered_alike(data: bytes) -> None:
    assert BUILT is not None
    _agree(data, BUILT, iter(range(-len(data) - 2, len(data) + 3)))


@compiled_only
@settings(max_examples=examples(2000), deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_are_answered_alike(data: bytes) -> None:
    assert BUILT is not None
    _agree(data, BUILT)


BOUNDS = bytes((0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x0C, 0x16, 0x20, 0x24, 0x2C, 0x36, 0x40, 0x41, 0x6D, 0x7F, 0x80))
BOUNDS += bytes((0x81, 0x82, 0x83, 0xFF))
"""Each byte a search tests a bound or a set at, with its neighbours."""


@compiled_only
def test_every_three_bytes_after_each_tag_are_answered_alike() -> None:
    """Each head, piece and break byte followed by every three of `BOUNDS` (every length form and its bounds, every
    tag, a name's first letter), then a few tails that complete what they open (a piece, a nested head, a break)."""
    assert BUILT is not None
    for lead in (b"\x24", b"\x33", b"\x3a", b"\xa0", b"\xbf", b"\x04", b"\x0c", b"\x16", b"\x00a\x00_\x00"):
        for one in BOUNDS:
            for two in BOUNDS:
                for three in BOUNDS:
                    data = lead + bytes((one, two, three))
                    for tail in (b"mS", b"\x04\x00mS", b"\x01m\x24\x02\x04", b"\xff"):
                        _agree(data + tail, BUILT, iter((0, 1)))


@compiled_only
def test_bytes_alone_are_taken() -> None:
    """The twins are called with bytes only; anything else is refused (TypeError), never read as something else."""
    assert BUILT is not None
    for name, _, _ in TWINS:
        function = getattr(BUILT, name)
        for value in (bytearray(b"\x24\x80"), memoryview(b"\x24\x80"), "$", None):
            with pytest.raises(TypeError):
                function(value, 0)
        with pytest.raises(TypeError):
            function(b"\x24\x80", "0")
        with pytest.raises(TypeError):
            function(b"\x24\x80")


def test_a_stale_or_foreign_build_is_refused() -> None:
    digest = hashlib.sha256(b"/* one version */").hexdigest()
    assert binfast.stale(types.SimpleNamespace(ABI=binfast.ABI, SOURCE=digest), digest) is None
    assert "another version" in str(binfast.stale(types.SimpleNamespace(ABI=binfast.ABI, SOURCE="0" * 64), digest))
    assert "ABI" in str(binfast.stale(types.SimpleNamespace(ABI=binfast.ABI + 1, SOURCE=digest), digest))
    assert "ABI" in str(binfast.stale(types.SimpleNamespace(), None))


@compiled_only
def test_the_build_here_is_from_the_source_beside_it() -> None:
    """A build older than _binfast.c is caught here (run deploy/bootstrap.sh or pip install -e . again)."""
    source = ROOT / "egress" / "detect" / "_binfast.c"
    assert binfast.stale(BUILT, hashlib.sha256(source.read_bytes()).hexdigest()) is None


def test_the_compiled_twins_run_where_built_unless_the_scan_asks_for_the_pure_path() -> None:
    """A scanner made under ``EGRESS_SCAN_PURE=1`` (the scanner's switch) runs the pure twins; otherwise the
    compiled ones run where built."""
    code = (
        "from egress.detect import binrpc\n"
        "from egress.detect.registry import build_detectors\n"
        "from tests.lists import shipped_lists\n"
        "from egress.scanner import Scanner\n"
        "before = binrpc._ber_heads.__name__\n"
        "Scanner(build_detectors(shipped_lists()))\n"
        "print(before, binrpc._ber_heads.__name__, binrpc._breaks.__name__, binrpc._anchored.__name__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != hot.PURE_ENV}
    run = functools.partial(
        subprocess.run, [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    plain, pure = run(env=env), run(env={**env, hot.PURE_ENV: "1"})
    if BUILT is not None:
        assert plain.stdout.split() == ["ber_heads", "ber_heads", "breaks", "anchored"]
        assert pure.stdout.split() == ["ber_heads", "pure_ber_heads", "pure_breaks", "pure_anchored"]
    else:
        expected = ["pure_ber_heads", "pure_ber_heads", "pure_breaks", "pure_anchored"]
        assert plain.stdout.split() == pure.stdout.split() == expected


def test_the_switch_runs_either_and_the_answers_are_the_same() -> None:
    stream = b"\x00\xff\x24\x80\x04\x08mining.s\x04\x08ubscribe\x00\x00" + b"\xa1\x7f\x63job\x62_i\x61d\xff"
    answers = []
    try:
        for compiled in (False, True):
            binrpc.use_compiled(compiled)
            assert (binrpc._ber_heads is binrpc.pure_ber_heads) is (not compiled or BUILT is None)
            words: dict[bytes, tuple[int, int]] = {}
            answers.append(
                (binrpc._constructed(stream, 0, words), binrpc._chunked(stream, 0, words), sorted(words.items()))
            )
    finally:
        binrpc.use_compiled(True)
    assert answers[0] == answers[1]
    assert answers[0][0] == (2, 26)  # the head, to the end of its contents (00 00)


def test_egress_scan_says_which_binrpc_searches_run() -> None:
    env = {k: v for k, v in os.environ.items() if k != hot.PURE_ENV}
    for pure, name in ((True, "pure"), (False, "compiled" if BUILT is not None else "pure")):
        out = subprocess.run(
            [sys.executable, "-m", "egress", "scan", "--version"],
            capture_output=True,
            text=True,
            env={**env, hot.PURE_ENV: "1"} if pure else env,
            check=True,
        )
        assert f"binrpc searches: {name}," in out.stdout


@compiled_only
def test_every_anchor_in_every_case_is_answered_alike() -> None:
    """Each of binrpc's anchors (the compiled module repeats them) in upper, lower and mixed case, whole and one byte
    short, a letter changed, alone and after other bytes, from every start: the C list and `_ANCHORS` agree."""
    assert BUILT is not None
    assert binrpc._ANCHORS == (b"mining.", b"eth_", b"block", b"getwork")
    for anchor in binrpc._ANCHORS:
        for form in (anchor, anchor.upper(), anchor.title(), anchor.swapcase().title()):
            for data in (form, form[:-1], form[1:], form[:-1] + b"#", b"\xff\x00" + form, form + b"x", form[:2]):
                _agree(data, BUILT, iter(range(-len(data) - 1, len(data) + 2)))
                assert binrpc.pure_anchored(data, 0) is (data.lower().find(anchor) >= 0)
    assert not BUILT.anchored(b"MIN\xc9NG.", 0) and not BUILT.anchored(b"mining\xae", 0)  # A-Z alone are lowered
