"""`egress scan --jobs N`: the files of one scan spread over N worker processes.

Each file is scanned whole by one `egress.scanner.Scanner` in one worker (built there from the same name lists
and hot path), and the results are handed back in the order of the files, so the findings, their order and the
counts are those of ``--jobs 1`` (tests/test_scan_jobs.py). ndpiReader's threads split the same way (``-n`` with
several files; it ignores ``-n`` for one file). One file is not split by flow hash: the flow table's generations
(`egress.flowtable`) start at packets that only the worker owning their flow sees, so split workers would drop
idle flows at other moments than one scanner, and findings would differ; docs/scanner-hot-path.md has the design
that would keep them equal.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator

from egress.capture.opener import STDIN
from egress.scanner import FileStats, FlowFinding, Scanner

Progress = Callable[[int], None]

_WORKER: dict[str, Scanner] = {}
"""The scanner of a worker process, made once by the factory `scan_files` was given."""


def _start(make_scanner: Callable[[], Scanner]) -> None:
    _WORKER["scanner"] = make_scanner()


def _scan_one(path: str) -> tuple[FileStats, list[FlowFinding]]:
    stats = FileStats(path)
    return stats, list(_WORKER["scanner"].scan(path, stats))


def scan_files(
    scanner: Scanner,
    paths: Iterable[str],
    jobs: int = 1,
    progress: Callable[[str], Progress | None] | None = None,
    make_scanner: Callable[[], Scanner] | None = None,
) -> Iterator[tuple[FileStats, Iterable[FlowFinding]]]:
    """Each file's stats and findings, in the order of ``paths``. With ``jobs`` > 1 and more than one file (none
    of them standard input), the files are scanned in ``jobs`` worker processes, each with the scanner
    ``make_scanner`` (a picklable callable) makes; otherwise here with ``scanner``, one after the other, the
    findings yielded as they are made (and ``progress(path)`` called for a progress callback)."""
    paths = list(paths)
    workers = min(jobs, len(paths))
    if workers <= 1 or STDIN in paths or make_scanner is None:
        for path in paths:
            stats = FileStats(path)
            yield stats, scanner.scan(path, stats, progress(path) if progress else None)
        return
    # spawn, not fork: the parent may run threads (a test runner's), and a forked child can inherit a held lock
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_start, initargs=(make_scanner,)) as pool:
        yield from pool.imap(_scan_one, paths)
