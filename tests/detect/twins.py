"""What the tests of a compiled extension and its pure twins share (tests/detect/test_jsonfast.py and
test_binfast.py): the corpus captures and their flows' bytes, a scan's findings as text, a twin
that also asks the compiled function, and the inputs every such test feeds both (each prefix and window of the
corpus's flows, and those flows with pieces put in at random)."""

from __future__ import annotations

import functools
import pathlib
import random
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from egress.capture import hot
from egress.detect.registry import DetectorSet, build_detectors
from egress.scanner import FileStats, Scanner
from tests.corpus import CORPUS, TUNNELS
from tests.detect import seeds
from tests.lists import shipped_lists


def captures() -> list[pathlib.Path]:
    roots = [root for root in (CORPUS, TUNNELS) if root.exists()]
    return sorted(p for root in roots for p in root.rglob("*") if p.suffix in (".pcap", ".pcapng"))


@functools.cache
def detectors() -> DetectorSet:
    return build_detectors(shipped_lists())


def scan(scanner: Scanner, path: str) -> list[str]:
    """Every finding of ``path`` and the file's counts, as text, in the order they were made."""
    stats = FileStats(path)
    found = [repr((f.finding, f.meta, f.ts)) for f in scanner.scan(path, stats)]
    return [*found, repr((stats.packets, stats.flows, stats.unidentified, stats.findings))]


def checking(pure: Callable[..., Any], fast: Callable[..., Any], calls: list[int]) -> Callable[..., Any]:
    """``pure``, which also asks ``fast`` and fails on any other answer."""

    def both(*args: Any) -> Any:
        answer = pure(*args)
        assert fast(*args) == answer, args
        calls[0] += 1
        return answer

    return both


def flow_sides() -> Iterator[bytes]:
    """Each direction of each stream, and each datagram, of every corpus capture."""
    for path in captures():
        part = seeds._capture_seeds(str(path))
        for flow in part.streams:
            yield from (flow.client, flow.server)
        for gram in part.datagrams:
            yield from (payload for _, payload in gram.datagrams)


def each_prefix_and_window(agree: Callable[[bytes], None], window: int) -> None:
    """``agree`` on every 97-byte prefix of the corpus's flows, and on the ``window`` bytes from each such end."""
    sides = [side for side in flow_sides() if side]
    assert len(sides) > 100
    for side in sides:
        for end in (*range(0, len(side), 97), len(side)):
            agree(side[:end])
            agree(side[end : end + window])


def mutated(pieces: Sequence[bytes], seed: int, rounds: int, most: int) -> Iterator[bytes]:
    """``rounds`` times for each corpus flow: a prefix of it (up to 2 KiB) with 1 to ``most - 1`` of ``pieces``
    put in at random places."""
    rng = random.Random(seed)
    for side in (side for side in flow_sides() if side):
        for _ in range(rounds):
            data = bytearray(side[: rng.randrange(1, 2048)])
            for _ in range(rng.randrange(1, most)):
                at = rng.randrange(len(data) + 1)
                data[at:at] = rng.choice(pieces)
            yield bytes(data)


Twin = tuple[str, Callable[..., Any], Callable[..., Any]]
"""(the name a module switches, its pure twin, the compiled function)."""


def corpora_scanned_alike(
    monkeypatch: pytest.MonkeyPatch, module: types.ModuleType, pairs: Sequence[Twin]
) -> list[int]:
    """Both corpora scanned with each pure twin of ``pairs`` in ``module``, each call also asked of its compiled
    function (every answer compared), then scanned with the compiled functions: the same findings, order and
    counts, file by file. The calls each pair answered (a test checks the scan reads through them)."""
    found = captures()
    assert len(found) > 50
    scanner = Scanner(detectors(), hot=hot.PURE)  # made first: under EGRESS_SCAN_PURE=1 it sets the twins itself
    calls = [[0] for _ in pairs]
    for (name, pure, fast), count in zip(pairs, calls, strict=True):
        monkeypatch.setattr(module, name, checking(pure, fast, count))
    before = {path: scan(scanner, str(path)) for path in found}
    for name, _, fast in pairs:
        monkeypatch.setattr(module, name, fast)
    for path in found:
        assert scan(scanner, str(path)) == before[path], path
    return [count[0] for count in calls]
