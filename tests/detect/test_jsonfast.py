"""The JSON-RPC reader's compiled byte work (egress/detect/_jsonfast.c) gives what its pure twins give
(`jsonrpc.pure_decode`, `jsonrpc.pure_inert_end`): at every call a scan of both corpora makes, on every prefix of
the corpus's flows, on generated escapes, mutated and random bytes; whole scans of both corpora find the same with
either; a stale build is refused and ``EGRESS_SCAN_PURE=1`` runs the pure twins."""

from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import subprocess
import sys
import types

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from egress.capture import hot
from egress.detect import jsonfast, jsonrpc
from tests.budget import examples
from tests.corpus import needs_corpus, needs_tunnels
from tests.detect import twins

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILT = jsonfast.COMPILED
compiled_only = pytest.mark.skipif(
    BUILT is None and os.environ.get("CI") != "true",
    reason="egress.detect._jsonfast is not built here (no C compiler): only the pure path runs",
)

PIECES = [
    *(b"\\", b"u", b"U", b"x", b"/", b"0", b"00", b"0000", b"000000"),
    *(b"2", b"7", b"8", b"1", b"f", b"F", b"g", b"22", b"5c", b"5C", b"7f", b"7F", b"41", b"6d"),
    *(b"\x00", b"\xef", b"\xbb", b"\xbf", b"\xef\xbb\xbf", b"\xff", b"\xfe", b"\xff\xfe", b"\xfe\xff"),
    *(b"\n", b",", b"}", b'"', b":", b" ", b"{", b"[", b"]", b"\r", b"\t", b"a", b"method"),
]
"""Every byte each step of `decode` reads (escape starts and digits, NUL, the byte-order marks' bytes) and every
`_INERT` byte, to join into inputs where the steps meet."""


def _agree(data: bytes, compiled: types.ModuleType) -> None:
    assert compiled.decode(data) == jsonrpc.pure_decode(data), data
    for cut in {0, 1, len(data) // 2, len(data) - 1, len(data), len(data) + 1, -1, -len(data) - 1}:
        assert compiled.inert_end(data, cut) == jsonrpc.pure_inert_end(data, cut), (data, cut)


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
    pairs: list[twins.Twin] = [
        ("decode", jsonrpc.pure_decode, BUILT.decode),
        ("_inert_end", jsonrpc.pure_inert_end, BUILT.inert_end),
    ]
    decodes, ends = twins.corpora_scanned_alike(monkeypatch, jsonrpc, pairs)
    assert decodes > 2_000 and ends > 1_000  # the scan reads through them (2,627 and 1,374), not around them


@needs_corpus
@compiled_only
def test_every_prefix_of_the_corpus_flows_is_answered_alike() -> None:
    built = BUILT
    assert built is not None
    twins.each_prefix_and_window(lambda data: _agree(data, built), 300)


@needs_corpus
@compiled_only
def test_mutated_corpus_flows_are_answered_alike() -> None:
    """Corpus flows with the bytes `decode` reads put in at random places (escapes, NULs, byte-order marks)."""
    assert BUILT is not None
    for data in twins.mutated(PIECES, seed=18, rounds=8, most=12):
        _agree(data, BUILT)


@compiled_only
@settings(max_examples=examples(3000), deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=16).map(b"".join))
@example(b"\\u0022\\u005c\\u007f\\u007F\\u0041\\/")  # kept escapes, decoded ones
@example(b"\\U000000410\\U0041\\U00000041\\U00004")  # the optional 0000 tried first, then without it
@example(b"\\\\u0041\\x4")  # a backslash before an escape; one cut off at the end
@example(b"\xff\x00\xfe\xef\x00\xbb\xbf\xff\xff\xfe\xfe")  # marks made by dropping NULs; one made by a removal
@example(b"\\\x00u0041\\\xef\xbb\xbfx41")  # escapes made by dropping NULs and marks
def test_generated_escapes_and_marks_are_answered_alike(data: bytes) -> None:
    assert BUILT is not None
    _agree(data, BUILT)
    for cut in range(len(data) + 2):
        assert BUILT.inert_end(data, cut) == jsonrpc.pure_inert_end(data, cut)


@compiled_only
@settings(max_examples=examples(2000), deadline=None)
@given(st.binary(max_size=256))
def test_random_bytes_are_answered_alike(data: bytes) -> None:
    assert BUILT is not None
    _agree(data, BUILT)


@compiled_only
def test_every_escape_code_is_answered_alike() -> None:
    """Each escape form with every two-character code (printable or not, hex or not)."""
    assert BUILT is not None
    alphabet = b"0123456789abcdefABCDEFgG/"
    for first in alphabet:
        for second in alphabet:
            code = bytes((first, second))
            for form in (b"\\u00", b"\\x", b"\\U00", b"\\U000000", b"\\u", b"\\U0000"):
                _agree(form + code + b"!" + form + code, BUILT)


@compiled_only
def test_bytes_alone_are_taken() -> None:
    """The twins are called with bytes only; anything else is refused (TypeError), never read as something else."""
    assert BUILT is not None
    for value in (bytearray(b"{}"), memoryview(b"{}"), "{}", None):
        with pytest.raises(TypeError):
            BUILT.decode(value)
        with pytest.raises(TypeError):
            BUILT.inert_end(value, 0)
    with pytest.raises(TypeError):
        BUILT.inert_end(b"{}", "0")


def test_a_stale_or_foreign_build_is_refused() -> None:
    digest = hashlib.sha256(b"/* one version */").hexdigest()
    assert jsonfast.stale(types.SimpleNamespace(ABI=jsonfast.ABI, SOURCE=digest), digest) is None
    assert "another version" in str(jsonfast.stale(types.SimpleNamespace(ABI=jsonfast.ABI, SOURCE="0" * 64), digest))
    assert "ABI" in str(jsonfast.stale(types.SimpleNamespace(ABI=jsonfast.ABI + 1, SOURCE=digest), digest))
    assert "ABI" in str(jsonfast.stale(types.SimpleNamespace(), None))


@compiled_only
def test_the_build_here_is_from_the_source_beside_it() -> None:
    """A build older than _jsonfast.c is caught here (run deploy/bootstrap.sh or pip install -e . again)."""
    source = ROOT / "egress" / "detect" / "_jsonfast.c"
    assert jsonfast.stale(BUILT, hashlib.sha256(source.read_bytes()).hexdigest()) is None


def test_the_compiled_twins_run_where_built_unless_the_scan_asks_for_the_pure_path() -> None:
    """A scanner made under ``EGRESS_SCAN_PURE=1`` (the scanner's switch) runs the pure twins; otherwise the
    compiled ones run where built."""
    code = (
        "from egress.detect import jsonrpc\n"
        "from egress.detect.registry import build_detectors\n"
        "from tests.lists import shipped_lists\n"
        "from egress.scanner import Scanner\n"
        "before = jsonrpc.decode.__name__\n"
        "Scanner(build_detectors(shipped_lists()))\n"
        "print(before, jsonrpc.decode.__name__, jsonrpc._inert_end.__name__)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != hot.PURE_ENV}
    run = functools.partial(
        subprocess.run, [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    plain, pure = run(env=env), run(env={**env, hot.PURE_ENV: "1"})
    if BUILT is not None:
        assert plain.stdout.split() == ["decode", "decode", "inert_end"]
        assert pure.stdout.split() == ["decode", "pure_decode", "pure_inert_end"]
    else:
        assert plain.stdout.split() == pure.stdout.split() == ["pure_decode", "pure_decode", "pure_inert_end"]


def test_the_switch_runs_either_and_the_answers_are_the_same() -> None:
    data = b'\x00{"\\u006dethod": "a\\/b"}\xef\xbb\xbf, '
    answers = []
    try:
        for compiled in (False, True):
            jsonrpc.use_compiled(compiled)
            assert (jsonrpc.decode is jsonrpc.pure_decode) is (not compiled or BUILT is None)
            answers.append(
                (jsonrpc.decode(data), jsonrpc._inert_end(data, 3), jsonrpc.Reading().read(data + b"\n", True))
            )
    finally:
        jsonrpc.use_compiled(True)
    assert answers[0] == answers[1]
    assert answers[0][0] == b'{"method": "a/b"}, '


def test_egress_scan_says_which_json_reader_runs() -> None:
    env = {k: v for k, v in os.environ.items() if k != hot.PURE_ENV}
    for pure, name in ((True, "pure"), (False, "compiled" if BUILT is not None else "pure")):
        out = subprocess.run(
            [sys.executable, "-m", "egress", "scan", "--version"],
            capture_output=True,
            text=True,
            env={**env, hot.PURE_ENV: "1"} if pure else env,
            check=True,
        )
        assert f"JSON reader: {name}," in out.stdout
