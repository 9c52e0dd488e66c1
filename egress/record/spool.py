"""The local disk spool: records that could not reach Redis wait here, in order, until they are delivered.

A directory (made by the first append) of append-only segment files (``seg-<first seq>.jsonl``), one JSON line
per batch, each batch fsynced before `append` returns, so a batch `append` accepted survives a crash of the process
or the machine.
The delivered position is kept in ``committed`` (replaced atomically); segments wholly delivered are deleted.
Each process appends to a segment of its own, so a torn last line left by a crash is never appended to; such a
line (never acknowledged) is skipped, logged and counted as ``torn``.

The spool is bounded (``max_bytes``): when full, `append` refuses with `SpoolFull` and counts the records in
``refused``; it never drops silently. Not thread-safe: the store serialises access.
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


class SpoolFull(OSError):
    """The spool holds ``max_bytes`` already: the batch was refused (and counted), not written."""


@dataclass(frozen=True, slots=True)
class SpoolBatch:
    """One appended batch; ``seq`` increases by one per batch, across restarts."""

    seq: int
    records: tuple[AttemptRecord, ...]


class Spool:
    def __init__(self, directory: Path, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.refused = 0
        """Records refused because the spool was full."""
        self.torn = 0
        """Unreadable lines skipped (a crash in the middle of an append)."""
        self._torn_lines: set[tuple[str, int]] = set()
        self._committed = self._read_committed()
        self._next_seq = max(self._committed, self._last_seq_on_disk()) + 1
        self._current: Path | None = None
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
            log.error(
                "record spool %s is full (%d of %d bytes): %d records refused (%d so far)",
                self.directory,
                self.bytes,
                self.max_bytes,
                len(records),
                self.refused,
            )
            raise SpoolFull(f"record spool {self.directory} is full ({self.bytes} bytes): {len(records)} refused")
        self.directory.mkdir(parents=True, exist_ok=True)  # made on first use: a store that never spools makes none
        if self._current is None or self._current.stat().st_size >= SEGMENT_BYTES:
            self._current = self.directory / f"seg-{seq:016d}.jsonl"
            new_segment = True
        else:
            new_segment = False
        with self._current.open("ab") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        if new_segment:
            _fsync_dir(self.directory)
        self.bytes += len(line)
        self._next_seq = seq + 1
        return seq

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
        marker = self.directory / "committed"
        temporary = self.directory / "committed.tmp"
        with temporary.open("w") as handle:
            handle.write(str(up_to))
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(marker)
        segments = self._segments()
        firsts = [_first_seq(path) for path in segments]
        for index, path in enumerate(segments):
            last = firsts[index + 1] - 1 if index + 1 < len(firsts) else self._next_seq - 1
            if last <= up_to:
                self.bytes -= path.stat().st_size
                path.unlink()
                if path == self._current:
                    self._current = None
        _fsync_dir(self.directory)

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
