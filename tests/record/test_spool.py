from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from egress.record import spool as spool_module
from egress.record.spool import Spool, SpoolFull
from tests.record import record


def _batches(spool: Spool) -> list[tuple[int, list[float]]]:
    return [(batch.seq, [item.ts for item in batch.records]) for batch in spool.pending()]


def test_batches_come_back_in_order_and_commit_removes_them(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    assert spool.empty
    assert spool.append([record(ts=1.0), record(ts=2.0)]) == 1
    assert spool.append([record(ts=3.0)]) == 2
    assert not spool.empty
    assert _batches(spool) == [(1, [1.0, 2.0]), (2, [3.0])]
    spool.commit(1)
    assert _batches(spool) == [(2, [3.0])]
    spool.commit(2)
    assert spool.empty and _batches(spool) == []
    assert list(tmp_path.glob("seg-*")) == []
    assert spool.bytes == 0


def test_the_directory_is_made_by_the_first_append(tmp_path: Path) -> None:
    directory = tmp_path / "not" / "yet"
    spool = Spool(directory)
    assert spool.empty and len(spool) == 0 and spool.bytes == 0
    assert not directory.exists()  # a store that never spools leaves nothing behind
    spool.append([record(ts=1.0)])
    assert [batch.seq for batch in Spool(directory).pending()] == [1]


def test_records_survive_a_new_process(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    written = [record(ts=float(index)) for index in range(5)]
    first.append(written[:2])
    first.append(written[2:])
    first.commit(1)
    del first
    second = Spool(tmp_path)
    assert [list(batch.records) for batch in second.pending()] == [written[2:]]
    assert second.append([record(ts=9.0)]) == 3  # sequence numbers continue
    assert [batch.seq for batch in second.pending()] == [2, 3]


def test_sequence_continues_after_everything_was_committed(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    first.append([record()])
    first.commit(1)
    second = Spool(tmp_path)
    assert second.empty
    assert second.append([record()]) == 2


def test_a_torn_last_line_is_skipped_logged_and_never_appended_to(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = Spool(tmp_path)
    first.append([record(ts=1.0)])
    [segment] = tmp_path.glob("seg-*")
    with segment.open("ab") as handle:
        handle.write(b'{"seq": 2, "records": [{"id"')  # a crash in the middle of an append
    second = Spool(tmp_path)
    second.append([record(ts=3.0)])
    with caplog.at_level(logging.ERROR):
        assert _batches(second) == [(1, [1.0]), (2, [3.0])]
    assert second.torn == 1
    assert "unreadable" in caplog.text
    assert len(list(tmp_path.glob("seg-*"))) == 2


def test_a_full_spool_refuses_and_counts(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=2000)
    spool.append([record()])
    with pytest.raises(SpoolFull, match="full"):
        for _ in range(10):
            spool.append([record(), record()])
    assert spool.refused == 2
    accepted = sum(len(batch.records) for batch in spool.pending())
    assert spool.bytes <= 2000
    spool.commit(max(batch.seq for batch in spool.pending()))
    spool.append([record()])  # room again once delivered
    assert accepted >= 1


def test_segments_roll_and_only_delivered_ones_are_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", 1000)
    spool = Spool(tmp_path)
    for index in range(10):
        spool.append([record(ts=float(index))])
    segments = len(list(tmp_path.glob("seg-*")))
    assert segments > 2
    spool.commit(5)
    assert 0 < len(list(tmp_path.glob("seg-*"))) < segments
    assert [seq for seq, _ in _batches(spool)] == [6, 7, 8, 9, 10]
    assert [seq for seq, _ in _batches(Spool(tmp_path))] == [6, 7, 8, 9, 10]


def test_the_default_cap_is_below_the_free_space(tmp_path: Path) -> None:
    stat = os.statvfs(tmp_path)
    cap = Spool(tmp_path / "not-yet").max_bytes
    assert 0 < cap <= min(spool_module.DEFAULT_MAX_BYTES, stat.f_bavail * stat.f_frsize // 2 + 1024 * 1024)


def test_a_write_failing_midway_is_cut_off_so_the_next_lines_stay_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path)
    spool.append([record(ts=1.0)])
    real_write = os.write

    def half_then_enospc(fd: int, data: bytes | memoryview) -> int:
        if len(data) > 100:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_enospc)
    with pytest.raises(SpoolFull, match="No space left"):
        spool.append([record(ts=2.0)])
    monkeypatch.setattr(os, "write", real_write)
    assert spool.refused == 1
    spool.append([record(ts=3.0)])
    assert _batches(spool) == [(1, [1.0]), (2, [3.0])]
    assert _batches(Spool(tmp_path)) == [(1, [1.0]), (2, [3.0])] and spool.torn == 0


def test_a_commit_needs_no_new_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_module, "SEGMENT_BYTES", 500)
    spool = Spool(tmp_path)
    for index in range(6):
        spool.append([record(ts=float(index))])
    spool.commit(1)  # the marker exists from now on
    real_open = Path.open

    def no_new_files(path: Path, *args: Any, **kwargs: Any) -> Any:
        if path.name == "committed.tmp":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Path, "open", no_new_files)
    spool.commit(4)
    monkeypatch.setattr(Path, "open", real_open)
    assert [seq for seq, _ in _batches(Spool(tmp_path))] == [5, 6]  # the marker was rewritten in place
    assert not (tmp_path / "committed.tmp").exists()
