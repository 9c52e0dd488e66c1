"""The local disk spool: records that could not reach Redis wait here, in order, until they are delivered.

A directory (made by the first append) of append-only segment files (``seg-<first seq>.jsonl``), one JSON line
per batch, each batch fsynced before `append` returns, so a batch `append` accepted survives a crash of the process
or the machine.
The delivered position is kept in ``committed`` (replaced atomically); segments wholly delivered are deleted.
Each process appends to a segment of its own, so a torn last line left by a crash is never appended to; such a
line (never acknowledged) is skipped, logged and counted as ``torn``.

The spool is bounded (``max_bytes``, by default `default_max_bytes`: below the disk's free space): when full, or
when the disk itself is (ENOSPC, or any error writing), `append` refuses with `SpoolFull`, cuts off what it had
written of the line, and counts the records in ``refused``; the caller counts and logs them. It never drops
silently. A commit needs no free space: the delivered segments are deleted first, and the marker is rewritten in
place if it cannot be replaced. Not thread-safe: the store serialises access.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from egress.record.schema import AttemptRecord

log = logging.getLogger(__name__)

SEGMENT_BYTES: Final = 4 * 1024 * 1024
"""A segment is closed once it holds this much; a new one is started."""
DEFAULT_MAX_BYTES: Final = 256 * 1024 * 1024
"""The spool's cap at most, by default."""
_MARKER_WIDTH: Final = 20
"""Digits of the commit marker: always the same length, so it can be rewritten in place without new space."""


def default_max_bytes(directory: Path) -> int:
    """min(`DEFAULT_MAX_BYTES`, half the free space of the disk holding ``directory`` now): the cap leaves room
    for the rest of the system, and the spool reaches its cap before the disk is full."""
    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    stat = os.statvfs(existing)
    return min(DEFAULT_MAX_BYTES, stat.f_bavail * stat.f_frsize // 2)


class SpoolFull(OSError):
    """The spool holds ``max_bytes`` already, or its disk is full: the batch was refused (and counted), not
    written."""


@dataclass(frozen=True, slots=True)
class SpoolBatch:
    """One appended batch; ``seq`` increases by one per batch, across restarts."""

    seq: int
    records: tuple[AttemptRecord, ...]


class Spool:
    def __init__(self, directory: Path, max_bytes: int | None = None) -> None:
        """``max_bytes``: the cap (None: `default_max_bytes` of the directory's disk now)."""
        self.directory = directory
        self.max_bytes = default_max_bytes(directory) if max_bytes is None else max_bytes
        self.refused = 0
        """Records refused because the spool was full."""
        self.torn = 0
        """Unreadable lines skipped (a crash in the middle of an append)."""
        self._torn_lines: set[tuple[str, int]] = set()
        self._committed = self._read_committed()
        self._next_seq = max(self._committed, self._last_seq_on_disk()) + 1
        self._current: Path | None = None
        self._marker_ready = (directory / "committed").exists()
        self._marker_failed = False
        self.bytes = sum(path.stat().st_size for path in self._segments())

    def __len__(self) -> int:
        """Batches waiting for delivery."""
        return sum(1 for _ in self.pending())

    @property
    def empty(self) -> bool:
        return self._next_seq - 1 <= self._committed

    def append(self, records: Sequence[AttemptRecord]) -> int:
        """Write one batch durably (fsync) and return its seq; `SpoolFull` if it does not fit."""
        seq = self._next_seq
        line = (json.dumps({"seq": seq, "records": [record.to_json() for record in records]}) + "\n").encode()
        if self.bytes + len(line) > self.max_bytes:
            self.refused += len(records)
            raise SpoolFull(f"record spool {self.directory} is full ({self.bytes} of {self.max_bytes} bytes)")
        try:
            self._write(seq, line)
        except OSError as error:  # ENOSPC above all: the disk is full before the cap
            self.refused += len(records)
            raise SpoolFull(f"record spool {self.directory} cannot be written: {error}") from error
        self.bytes += len(line)
        self._next_seq = seq + 1
        return seq

    def _write(self, seq: int, line: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)  # made on first use: a store that never spools makes none
        if not self._marker_ready:  # made while there is room, so that a commit on a full disk can rewrite it
            self._write_marker(self._committed)
        if self._current is None or self._current.stat().st_size >= SEGMENT_BYTES:
            self._current = self.directory / f"seg-{seq:016d}.jsonl"
            new_segment = True
        else:
            new_segment = False
        fd = os.open(self._current, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            start = os.fstat(fd).st_size
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            except OSError:
                # What was written of the line must go: the next append would follow a torn line without its
                # newline and be lost with it. Truncating needs no space.
                os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)
        if new_segment:
            _fsync_dir(self.directory)

    def pending(self) -> Iterator[SpoolBatch]:
        """The batches not yet committed, oldest first."""
        for path in self._segments():
            for batch in self._read_segment(path):
                if batch.seq > self._committed:
                    yield batch

    def commit(self, up_to: int) -> None:
        """Mark every batch with ``seq <= up_to`` delivered; delete the segments that hold nothing else."""
        if up_to <= self._committed:
            return
        self._committed = up_to
        segments = self._segments()
        firsts = [_first_seq(path) for path in segments]
        for index, path in enumerate(segments):  # first: frees the space the marker may need on a full disk
            last = firsts[index + 1] - 1 if index + 1 < len(firsts) else self._next_seq - 1
            if last <= up_to:
                self.bytes -= path.stat().st_size
                path.unlink()
                if path == self._current:
                    self._current = None
        # A crash between the deletion and the marker replays the delivered batches of the segments left;
        # delivery stores nothing twice (seen keys).
        self._write_marker(up_to)
        _fsync_dir(self.directory)

    def _write_marker(self, up_to: int) -> None:
        text = f"{up_to:0{_MARKER_WIDTH}d}\n".encode()
        marker = self.directory / "committed"
        temporary = self.directory / "committed.tmp"
        try:
            with temporary.open("wb") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            temporary.replace(marker)
            self._marker_ready, self._marker_failed = True, False
            return
        except OSError as error:
            temporary.unlink(missing_ok=True)
            replace_error = error
        try:  # no space for a new file: overwrite the marker's bytes in place (same length: no new block)
            fd = os.open(marker, os.O_WRONLY)
            try:
                os.pwrite(fd, text, 0)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as error:
            if self._marker_failed:
                return
            self._marker_failed = True  # logged once until a marker is written again
            log.warning(
                "record spool %s: commit marker not written (%s; %s): a restart replays delivered batches, which "
                "Redis stores once",
                self.directory,
                replace_error,
                error,
            )

    def _segments(self) -> list[Path]:
        return sorted(self.directory.glob("seg-*.jsonl"), key=_first_seq)

    def _read_segment(self, path: Path) -> Iterator[SpoolBatch]:
        try:
            handle = path.open("rb")
        except FileNotFoundError:  # committed (deleted) since the listing
            return
        with handle:
            for number, line in enumerate(handle, 1):
                try:
                    data = json.loads(line)
                    batch = SpoolBatch(
                        seq=int(data["seq"]),
                        records=tuple(AttemptRecord.from_json(item) for item in data["records"]),
                    )
                except (ValueError, KeyError, TypeError) as error:
                    if (path.name, number) not in self._torn_lines:
                        self._torn_lines.add((path.name, number))
                        self.torn += 1
                        log.error("record spool %s line %d unreadable, skipped: %s", path, number, error)
                    continue
                yield batch

    def _read_committed(self) -> int:
        try:
            return int((self.directory / "committed").read_text().strip() or "0")
        except FileNotFoundError:
            return 0

    def _last_seq_on_disk(self) -> int:
        segments = self._segments()
        if not segments:
            return 0
        last = _first_seq(segments[-1]) - 1
        for batch in self._read_segment(segments[-1]):
            last = max(last, batch.seq)
        return last


def _first_seq(path: Path) -> int:
    return int(path.stem.removeprefix("seg-"))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
