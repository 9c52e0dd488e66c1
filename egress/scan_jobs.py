"""`egress scan --jobs N`: the work of one scan spread over N worker processes.

Files smaller than `split_bytes` are scanned whole, one per worker (`multiprocessing.Pool`), the results handed
back in the order of the files. A file at least that large is split by flow over a `Team` of N processes (this
one and N - 1 spawned), each inspecting its share of the flows (`egress.scan_split`). Either way the findings,
their order and the counts are those of ``--jobs 1`` (tests/test_scan_jobs.py). ndpiReader's threads split only
the first way (``-n`` with several files; it ignores ``-n`` for one file).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING

from egress.capture.opener import STDIN
from egress.scan_split import Link, Part, SplitAbort, merge, scan_part
from egress.scanner import FileStats, FlowFinding, Scanner

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

__all__ = ["SPLIT_BYTES", "SPLIT_ENV", "Team", "scan_files", "scan_part", "split_bytes"]

log = logging.getLogger(__name__)

Progress = Callable[[int], None]

SPLIT_BYTES = 64 << 20
"""Files at least this large are split by flow over the workers; smaller ones are scanned whole, one per worker
(starting the workers and the word they exchange at each table generation cost more than a small file's scan).
``EGRESS_SCAN_SPLIT_BYTES`` sets another size (0: split every file, as the tests do)."""
SPLIT_ENV = "EGRESS_SCAN_SPLIT_BYTES"

_WORKER: dict[str, Scanner] = {}
"""The scanner of a worker process, made once by the factory `scan_files` was given."""


def _start(make_scanner: Callable[[], Scanner]) -> None:
    _WORKER["scanner"] = make_scanner()


def _scan_one(path: str) -> tuple[FileStats, list[FlowFinding]]:
    stats = FileStats(path)
    return stats, list(_WORKER["scanner"].scan(path, stats))


def split_bytes() -> int:
    """The size from which a file is split by flow (`SPLIT_BYTES`, or ``EGRESS_SCAN_SPLIT_BYTES``)."""
    return int(os.environ.get(SPLIT_ENV) or SPLIT_BYTES)


def _splits(path: str, threshold: int) -> bool:
    return path != STDIN and os.path.isfile(path) and os.path.getsize(path) >= threshold


def scan_files(
    scanner: Scanner,
    paths: Iterable[str],
    jobs: int = 1,
    progress: Callable[[str], Progress | None] | None = None,
    make_scanner: Callable[[], Scanner] | None = None,
) -> Iterator[tuple[FileStats, Iterable[FlowFinding]]]:
    """Each file's stats and findings, in the order of ``paths``. With ``jobs`` > 1 (and ``make_scanner``, a
    picklable callable that makes a worker's scanner), a file of `split_bytes` or more is split by flow over
    ``jobs`` processes, and otherwise, with more than one file (none of them standard input), the files are
    scanned in ``jobs`` worker processes. Files neither way are scanned here with ``scanner``, the findings
    yielded as they are made (and ``progress(path)`` called for a progress callback)."""
    paths = list(paths)
    if jobs > 1 and make_scanner is not None:
        threshold = split_bytes()
        if any(_splits(path, threshold) for path in paths):
            with Team(jobs, make_scanner, scanner) as team:
                for path in paths:
                    bar = progress(path) if progress else None
                    if _splits(path, threshold):
                        yield team.scan(scanner, path, bar)
                    else:
                        stats = FileStats(path)
                        yield stats, scanner.scan(path, stats, bar)
            return
    workers = min(jobs, len(paths))
    if workers <= 1 or STDIN in paths or make_scanner is None:
        for path in paths:
            stats = FileStats(path)
            yield stats, scanner.scan(path, stats, progress(path) if progress else None)
        return
    # spawn, not fork: the parent may run threads (a test runner's), and a forked child can inherit a held lock
    import multiprocessing  # here and in `Team`: a scan in one process does without it (~5 % of its start-up)

    with multiprocessing.get_context("spawn").Pool(workers, initializer=_start, initargs=(make_scanner,)) as pool:
        yield from pool.imap(_scan_one, paths)


def _as_is(scanner: Scanner) -> Scanner:
    return scanner


def _peer(
    me: int,
    jobs: int,
    make_scanner: Callable[[], Scanner],
    tasks: Connection,
    inboxes: dict[int, Connection],
    outboxes: list[Connection],
) -> None:
    """A spawned worker of a `Team`: the share of worker ``me`` of each file ``tasks`` names, sent back on it
    (``None`` when it gave up the file); ``None`` for a file ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C is the parent's to act on: it ends the team
    scanner = make_scanner()
    link = Link(inboxes, outboxes)
    while (task := tasks.recv()) is not None:
        link.job, path = task
        try:
            part: Part | None = scan_part(scanner, path, me, jobs, link)
        except Exception:  # any failure: the file is scanned again in one process
            log.debug("worker %d gave up %s", me, path, exc_info=True)
            link.abort()
            part = None
        tasks.send(part)


class Team:
    """``jobs`` processes that split each large file by flow: this one as worker 0, and ``jobs`` - 1 started
    (`_peer`) once for the whole scan, with a pipe each way between every two of them.

    Forked when this process runs no other thread: a forked worker starts with ``scanner`` as it is here, where
    a spawned one imports egress and builds its detectors (``make_scanner``) again, about 0.3 s of CPU. With other
    threads (a test runner's) it is spawned, as a forked child could inherit a lock one of them held."""

    def __init__(self, jobs: int, make_scanner: Callable[[], Scanner], scanner: Scanner) -> None:
        import multiprocessing

        forking = threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if forking else "spawn")
        if forking:
            make_scanner = functools.partial(_as_is, scanner)
        inboxes: list[dict[int, Connection]] = [{} for _ in range(jobs)]
        outboxes: list[list[Connection]] = [[] for _ in range(jobs)]
        for sender in range(jobs):
            for receiver in range(jobs):
                if sender != receiver:
                    reading, writing = context.Pipe(duplex=False)
                    inboxes[receiver][sender] = reading
                    outboxes[sender].append(writing)
        self.jobs = jobs
        self.link = Link(inboxes[0], outboxes[0])
        self.tasks: list[Connection] = []
        self.processes: list[BaseProcess] = []
        for me in range(1, jobs):
            mine, theirs = context.Pipe()
            args = (me, jobs, make_scanner, theirs, inboxes[me], outboxes[me])
            kind = multiprocessing.get_context("fork") if forking else multiprocessing.get_context("spawn")
            process: BaseProcess = kind.Process(target=_peer, args=args, daemon=True, name=f"egress-scan-{me}")
            process.start()
            theirs.close()
            self.tasks.append(mine)
            self.processes.append(process)
        theirs_too = [c for box in inboxes[1:] for c in box.values()] + [c for box in outboxes[1:] for c in box]
        for connection in theirs_too:
            connection.close()  # the workers hold them now: a worker gone reads as the end of its pipes

    def scan(self, scanner: Scanner, path: str, progress: Progress | None) -> tuple[FileStats, list[FlowFinding]]:
        """The stats and findings of ``path`` as one ``scanner`` gives them, its flows split over the team (in
        one process here if a worker gives up the file)."""
        link = self.link
        link.job += 1
        for tasks in self.tasks:
            tasks.send((link.job, path))
        parts: list[Part | None] = []
        try:
            parts.append(scan_part(scanner, path, 0, self.jobs, link, progress))
        except SplitAbort as exc:
            log.debug("worker 0 gave up %s: %s", path, exc)
            link.abort()
            parts.append(None)
        except BaseException:
            link.abort()  # none waits for this worker's word while the team is ended
            raise
        for tasks in self.tasks:
            try:
                parts.append(tasks.recv())
            except (EOFError, OSError):
                parts.append(None)
        whole = [part for part in parts if part is not None]
        if len(whole) < len(parts):
            stats = FileStats(path)
            return stats, list(scanner.scan(path, stats))
        stats, found = merge(path, whole)
        stats.workers = self.jobs
        return stats, found

    def __enter__(self) -> Team:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for tasks in self.tasks:
            with contextlib.suppress(OSError):  # gone already
                tasks.send(None)
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join()
