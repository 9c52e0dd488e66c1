"""RecordStore under faults, against a real redis-server: count updates delivered exactly once through an outage and
read back as one record per attempt; a spool on a real, small tmpfs that fills up while Redis is away."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from egress.record import query
from egress.record.aggregate import Aggregator
from egress.record.layout import decode_entry
from egress.record.schema import AttemptRecord, make_id
from egress.record.store import RecordStore
from tests.record import record
from tests.redis_server import RedisServer
from tests.waiting import eventually, scaled

T0 = 1_700_000_000.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _store(url: str, spool: Path, clock: FakeClock, spool_max_bytes: int | None = None) -> RecordStore:
    return RecordStore(
        url,
        spool,
        gateway="gw1",
        retry_interval=1.0,
        socket_timeout=scaled(5.0),
        monotonic=clock,
        spool_max_bytes=spool_max_bytes,
    )


def _drain(store: RecordStore, clock: FakeClock) -> None:
    """Drain the spool once Redis takes writes (a restarted server may still be loading its data)."""

    def drained() -> bool:
        clock.now += 2  # past the retry interval
        store.drain()
        assert store.spool_pending == 0, f"{store.spool_pending} batches still spooled"
        return True

    eventually(drained, timeout=20, interval=0.1)


def _stored_ids(url: str) -> Counter[str]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        ids: Counter[str] = Counter()
        for key in client.scan_iter("egress:*:attempts"):
            entries: list[tuple[str, dict[str, str]]] = client.xrange(key)  # type: ignore[assignment]
            for _, fields in entries:
                ids.update(item.id for item in decode_entry(fields))
        return ids
    finally:
        client.close()


def test_count_updates_reach_redis_once_through_an_outage_and_read_as_one_record(
    server: RedisServer, tmp_path: Path
) -> None:
    clock = FakeClock()
    store = _store(server.url, tmp_path / "spool", clock)
    ids = iter(range(10**12, 10**12 + 10_000))  # apart from the ids tests.record.record makes
    aggregator = Aggregator(window=60.0, max_keys=100, make_id=lambda ts: make_id(ts, next(ids).to_bytes(10, "big")))
    sent: list[AttemptRecord] = []

    def tick(repeats: int, now: float) -> None:
        batch: list[AttemptRecord] = []
        for index in range(repeats):
            batch += aggregator.add(record(ts=T0 + now + index / 1000, dport=3333), now)
        batch += aggregator.flush(now + 1.0)  # the update interval has passed
        sent.extend(batch)
        store.write(batch)

    tick(5, 0.0)  # the record and an update of 4
    server.kill()
    clock.now += 2  # past the retry interval: the next write tries Redis, fails and spools
    tick(7, 2.0)
    tick(3, 4.0)
    assert store.spooled == 2 and store.redis_errors >= 1  # two count updates (of 7 and of 3)
    server.start()
    spooled_batches = list(store.delivery._spool.pending())
    _drain(store, clock)
    store.write(list(spooled_batches[0].records))  # a replay of a batch whose reply was lost
    assert store.duplicates == len(spooled_batches[0].records)

    assert Counter(item.id for item in sent) == _stored_ids(server.url)  # each record and update exactly once
    [first] = [item for item in sent if not item.update_of]
    [read] = store.read("agents")[0]
    assert (read.id, read.count, read.first_ts, read.update_of) == (first.id, 15, first.ts, "")
    assert read.last_ts == max(item.last_ts for item in sent)
    listed, _ = query.list_attempts(store, query.AttemptFilter(), 10, None)
    assert [(item.id, item.count) for item in listed] == [(first.id, 15)]
    found = query.get_attempt(store, first.id)
    assert found is not None and found.count == 15
    assert query.get_attempt(store, sent[-1].id) is None  # an update's own id names no attempt
    assert query.counts(store, T0 - 1, T0 + 10, "reason") == {"mining": 15}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs, mounted for this test only."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        with contextlib.suppress(OSError):
            if os.path.ismount(mount):
                subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.root  # it mounts a tmpfs: a root test, so `make test`'s second half runs it, not `make unit`
@pytest.mark.parametrize("cap", [None, 64 * 1024 * 1024], ids=["default-cap", "cap-above-the-disk"])
def test_a_full_spool_disk_loses_counted_records_logs_little_and_recovers_completely(
    server: RedisServer, small_disk: Path, cap: int | None, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    server.kill()
    store = _store(server.url, small_disk / "spool", clock, spool_max_bytes=cap)
    assert cap is not None or store.delivery._spool.max_bytes <= 512 * 1024
    kept: list[AttemptRecord] = []
    written = 0
    with caplog.at_level(logging.INFO):
        for batch_number in range(400):  # about 4 MiB of records: four times the disk
            batch = [record(ts=T0 + batch_number + index / 100, sport=index) for index in range(20)]
            lost_before = store.lost
            store.write(batch)
            written += len(batch)
            if store.lost == lost_before:
                kept += batch
            clock.now += 0.1  # 40 s in all: within one minute of log pacing
    assert store.lost > 0 and store.lost == written - len(kept) == written - store.spooled
    errors = [entry for entry in caplog.records if entry.levelno >= logging.WARNING]
    assert len(errors) <= 3, [entry.getMessage() for entry in errors]  # a Redis line, a lost line (and the disk's)
    assert not any(entry.exc_info for entry in caplog.records)

    server.start()
    _drain(store, clock)
    assert list((small_disk / "spool").glob("seg-*")) == []
    stored = _stored_ids(server.url)
    assert stored == Counter(item.id for item in kept)  # every record the spool took, exactly once
    store.write([record(ts=T0 + 999)])  # and writes go straight to Redis again
    assert store.spooled == len(kept)
    store.close()


@pytest.mark.parametrize("reverse", [False, True], ids=["oldest-first", "newest-first"])
def test_pages_show_each_attempt_once_with_updates_written_in_later_batches(
    server: RedisServer, tmp_path: Path, reverse: bool
) -> None:
    clock = FakeClock()
    store = _store(server.url, tmp_path / "spool", clock)
    ids = iter(range(10**12, 10**12 + 100_000))  # apart from the ids tests.record.record makes
    aggregator = Aggregator(window=5.0, max_keys=1000, make_id=lambda ts: make_id(ts, next(ids).to_bytes(10, "big")))
    want: Counter[tuple[int, int]] = Counter()
    for second in range(60):  # 60 s of attempts: 3 new destinations a second, each repeated for a few seconds
        batch: list[AttemptRecord] = []
        for step in range(10):
            now = second + step / 10
            for key in range(max(0, second * 3 - 6), second * 3 + 3):
                if (key + step) % 4 == 0:
                    batch += aggregator.add(record(ts=T0 + now, dport=key % 65536, sport=step), now)
                    want[(key, 0)] += 1
            batch += aggregator.flush(now)
        store.write(batch)  # a tick's batch: new records and updates of records written in earlier batches
    store.write(aggregator.flush(61.0, force=True))
    got: Counter[tuple[int, int]] = Counter()
    seen: list[str] = []
    cursor = None
    while True:
        page, cursor = store.read("agents", count=7, cursor=cursor, reverse=reverse)
        for item in page:
            assert not item.update_of
            got[(item.dport, 0)] += item.count
            seen.append(item.id)
        if cursor is None:
            break
    assert len(seen) == len(set(seen))  # no record twice across pages
    order = [(item.ts, item.id) for item in store.read("agents", count=100_000, reverse=reverse)[0]]
    assert order == sorted(order, reverse=reverse)
    assert got == want
    listed: list[AttemptRecord] = []
    page_cursor: str | None = None
    while True:
        found, page_cursor = query.list_attempts(store, query.AttemptFilter(), 11, page_cursor)
        listed += found
        if page_cursor is None:
            break
    assert sorted(item.id for item in listed) == sorted(seen)
    assert sum(item.count for item in listed) == sum(want.values())
    assert sum(query.counts(store, T0 - 1, T0 + 100, "sandbox").values()) == sum(want.values())
