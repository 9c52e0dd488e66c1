"""The attempt counters (egress/record/stats.py): the pure parts (periods, windows, buckets, the script's
arguments), then against real redis-servers and a real three-master Cluster: the counters agree with a count of
the stored records, expire with them, and stay exactly once when batches are replayed from the spool."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from egress.record import query, stats
from egress.record.layout import counts_key, destinations_key, entry_chunks, state_key, stream_key
from egress.record.printable import escape
from egress.record.schema import AttemptRecord
from egress.record.store import RecordStore
from tests.budget import examples
from tests.record import record
from tests.redis_server import RedisFactory, RedisServer, cluster_ok
from tests.waiting import eventually, scaled

T0 = 1_700_000_040.0
"""A whole minute (28333334 * 60)."""
DAY = 86400


# --- pure ---


@pytest.mark.parametrize(
    ("first", "last", "expected"),
    [
        (5, 5, [(60, 5)]),
        (0, 59, [(3600, 0)]),
        (58, 121, [(60, 58), (60, 59), (3600, 1), (60, 120), (60, 121)]),
        (0, 1439, [(86400, 0)]),
        (1380, 2940, [(3600, 23), (86400, 1), (3600, 48), (60, 2940)]),
        (1381, 1500, [*[(60, m) for m in range(1381, 1440)], (3600, 24), (60, 1500)]),
        (7, 6, []),
    ],
)
def test_cover_uses_the_fewest_whole_periods(first: int, last: int, expected: list[tuple[int, int]]) -> None:
    assert stats.cover(first, last) == expected


def test_cover_is_exact_for_any_span() -> None:
    rng = random.Random(3)
    for _ in range(examples(300)):
        first = rng.randrange(0, 10 * 1440)
        last = first + rng.randrange(0, 5 * 1440)
        covered = [
            m
            for unit, period in stats.cover(first, last)
            for m in range(period * unit // 60, (period + 1) * unit // 60)
        ]
        assert covered == list(range(first, last + 1))
        assert len(stats.cover(first, last)) <= 4 + 2 * 23 + 2 * 59


def test_cover_reads_ten_minutes_only_from_where_they_are_whole() -> None:
    assert stats.cover(58, 121, tens_from=0) == [(60, 58), (60, 59), (3600, 1), (60, 120), (60, 121)]
    assert stats.cover(7, 65, tens_from=0) == [(60, 7), (60, 8), (60, 9), *[(600, t) for t in range(1, 6)],
                                               *[(60, m) for m in range(60, 66)]]  # fmt: skip
    assert stats.cover(7, 65, tens_from=30) == [*[(60, m) for m in range(7, 30)], (600, 3), (600, 4), (600, 5),
                                                *[(60, m) for m in range(60, 66)]]  # fmt: skip
    rng = random.Random(4)
    for _ in range(examples(300)):
        first = rng.randrange(0, 10 * 1440)
        last = first + rng.randrange(0, 2 * 1440)
        tens_from = rng.randrange(0, 12 * 1440)
        made = stats.cover(first, last, tens_from)
        covered = [m for unit, period in made for m in range(period * unit // 60, (period + 1) * unit // 60)]
        assert covered == list(range(first, last + 1))
        assert all(period * 10 >= tens_from for unit, period in made if unit == 600)
        if tens_from <= first:  # an hour of minutes is at most 9 + 5 + 9 hashes
            assert len(made) <= 4 + 2 * 23 + 2 * 5 + 2 * 9


@pytest.mark.parametrize(
    ("window", "until", "expected"),
    [
        (3600, T0 + 30, (28333334 - 59, 28333334)),
        (3600, T0, (28333334 - 59, 28333334)),
        (1, T0 + 59.9, (28333334, 28333334)),
        (61, T0 + 1, (28333333, 28333334)),
    ],
)
def test_a_window_is_its_last_whole_minutes(window: float, until: float, expected: tuple[int, int]) -> None:
    assert stats.minutes(window, until) == expected


@pytest.mark.parametrize(
    ("window", "buckets", "count", "minutes_each"),
    [(3600, 30, 30, 2), (3600, 12, 12, 5), (600, 120, 10, 1), (DAY, 30, 30, 48), (DAY, 20, 13, 120),
     (2 * DAY, 30, 25, 120), (7 * DAY, 30, 29, 360), (7 * DAY, 28, 25, 420), (366 * DAY, 120, 92, 4 * 1440),
     (90, 30, 2, 1)],
)  # fmt: skip
def test_series_buckets_are_equal_whole_periods_up_to_now(
    window: float, buckets: int, count: int, minutes_each: int
) -> None:
    until = T0 + 17 * 3600 + 1234.5
    spans = stats.series_minutes(window, until, buckets)
    assert len(spans) == count <= buckets
    assert all(last - first + 1 == minutes_each for first, last in spans)
    assert all(a[1] + 1 == b[0] for a, b in itertools.pairwise(spans))
    first, last = stats.minutes(window, until)
    assert spans[0][0] <= first and spans[-1][0] <= last <= spans[-1][1]
    for first_minute, last_minute in spans:  # each bucket reads a few whole periods
        assert len(stats.cover(first_minute, last_minute)) <= max(1, minutes_each // 1440, min(minutes_each, 60))


def test_increments_of_an_entry() -> None:
    entry = [
        record(T0 + 10, host="pool.example.com"),
        record(T0 + 50, host="", dst="192.0.2.1", category="policy", reason="not-allowlisted", count=4),
        record(T0 + 70, host="pool.example.com"),
    ]
    made = stats.increments("agents", entry, max_age_s=DAY)
    minute = T0 // 60
    assert made[:4] == [
        (counts_key("agents", 60, int(minute)), DAY + 60, {"mining|mining": 1, "policy|not-allowlisted": 4}),
        (destinations_key("agents", 60, int(minute)), DAY + 60, {"pool.example.com": 1, "192.0.2.1": 4}),
        (counts_key("agents", 60, int(minute) + 1), DAY + 60, {"mining|mining": 1}),
        (destinations_key("agents", 60, int(minute) + 1), DAY + 60, {"pool.example.com": 1}),
    ]
    hours = [item for item in made if ":counts:3600:" in item[0]]
    assert hours == [
        (counts_key("agents", 3600, int(T0 // 3600)), DAY + 3600, {"mining|mining": 2, "policy|not-allowlisted": 4})
    ]
    keys, args = stats.with_counters(("k1",), ("a1", "a2"), "agents", entry, DAY)
    assert keys[0] == "k1" and len(keys) == 1 + len(made)
    assert args[:2] == ("a1", "a2") and args[-1] == len(made) and args[-2] == len(args) - 4


# --- against Redis ---


def _store(url: str, spool: Path, **options: object) -> RecordStore:
    settings: dict[str, object] = {"retry_interval": 0.0, "socket_timeout": scaled(5.0)}
    settings.update(options)
    return RecordStore(url, spool, "gw1", **settings)  # type: ignore[arg-type]


def _varied(count: int, start: float = T0 - 3 * 3600, span: float = 3 * 3600, seed: int = 1) -> list[AttemptRecord]:
    rng = random.Random(seed)
    out = []
    for index in range(count):
        kind = rng.randrange(3)
        out.append(
            record(
                start + rng.random() * span,
                sandbox=f"sbx-{rng.randrange(4)}",
                sport=index,
                category=("mining", "tunnel", "policy")[kind],
                reason=("mining", "tunnel", "not-allowlisted")[kind],
                host=("pool.example.com", "", "t.example.net")[kind],
                dst=f"203.0.113.{rng.randrange(5)}",
                count=rng.choice([1, 1, 1, 7]),
            )
        )
    return out


def _expected(records: list[AttemptRecord], since: float, until: float, by: str) -> dict[str, int]:
    """The count of the records themselves over the whole minutes from ``since`` to ``until``."""
    first, last = stats.minute(since), stats.minute(until)
    total: dict[str, int] = {}
    for item in records:
        if first <= stats.minute(item.ts) <= last:
            key = stats.destination(item) if by == "destination" else str(getattr(item, by))
            total[key] = total.get(key, 0) + item.count
    return dict(sorted(total.items(), key=lambda pair: (-pair[1], pair[0])))


def _check_counts(store: RecordStore, written: list[AttemptRecord]) -> None:
    rng = random.Random(9)
    windows = [(T0 - 4 * 3600, T0), (T0 - 3600 + 17.5, T0 - 600.25)]
    windows += [(T0 - 3 * 3600 + rng.random() * 10_000, T0 - rng.random() * 100) for _ in range(5)]
    for since, until in windows:
        for by in stats.BY:
            assert query.counts(store, since, until, by) == _expected(written, since, until, by), (since, until, by)


def test_counters_agree_with_the_records_over_any_window(server: RedisServer, tmp_path: Path) -> None:
    store = _store(server.url, tmp_path)
    written = _varied(3000)
    for start in range(0, len(written), 256):
        store.write(written[start : start + 256])
    _check_counts(store, written)
    buckets = query.series(store, 3 * 3600, T0, 30, "category")
    assert len(buckets) == 30
    assert sum(sum(b.counts.values()) for b in buckets) == sum(
        item.count for item in written if item.ts >= buckets[0].start
    )
    store.close()


def test_ten_minute_hashes_are_read_once_whole_and_agree_with_the_records(server: RedisServer, tmp_path: Path) -> None:
    """A first write notes from when its ten-minute hashes are whole (a while after it): before that minute windows
    read minutes (an egress without them may have written records there), after it ten minutes too."""
    store = _store(server.url, tmp_path)
    written = _varied(3000)
    store.write(written[:1500])
    raw = redis.Redis.from_url(server.url, decode_responses=True)
    now_minute = int(raw.time()[0]) // 60
    marks = {f"sbx-{i}": raw.hget(state_key(f"sbx-{i}"), stats.TENS_FIELD) for i in range(4)}
    assert all(
        int(str(mark)) % 10 == 0 and now_minute + 20 < int(str(mark)) <= now_minute + 31 for mark in marks.values()
    )
    raw.delete(*raw.keys("*:600:*"))  # as if written by an egress without them: not read, as not whole
    _check_counts(store, written[:1500])
    # Sandboxes whose ten-minute hashes are whole from the start (the bench's dump is made so): read, and right.
    again = [replace(item, sandbox=item.sandbox.replace("sbx", "new")) for item in written[1500:]]
    for index in range(4):
        raw.hset(state_key(f"new-{index}"), stats.TENS_FIELD, "0")
    for start in range(0, len(again), 256):
        store.write(again[start : start + 256])
    store.write(again[:256])  # a replay (seen): counts nothing twice
    assert raw.keys("*{new-0}:counts:600:*") and store.duplicates == 256
    _check_counts(store, written[:1500] + again)
    raw.close()
    store.close()


@pytest.mark.parametrize(
    "host",
    ['a"b', "back\\slash", "new\nline\ttab\x01", "ünï.例え.jp", "😀.example", "a/b", "{}[],:", "", " "],
)
def test_counts_of_any_name_and_any_size_come_back_exact(server: RedisServer, tmp_path: Path, host: str) -> None:
    """The sums come back as JSON text built in Lua: every name escaped, every total exact (beyond 2**32 too)."""
    store = _store(server.url, tmp_path)
    big = 2**40 + 3
    store.write([record(T0, host=host, count=big), record(T0 + 1, host="plain.example", dst="192.0.2.1")])
    expected = {escape(host) or "203.0.113.9": big, "plain.example": 1}  # a control character: as recorded, escaped
    assert query.counts(store, T0 - 60, T0 + 60, "destination") == expected
    assert query.counts(store, T0 - 60, T0 + 60, "sandbox") == {"agents": big + 1}
    store.close()


def test_counters_expire_with_the_records_age_retention(server: RedisServer, tmp_path: Path) -> None:
    store = _store(server.url, tmp_path, retention_max_age_days=1)
    store.write([record(T0)])
    raw = redis.Redis.from_url(server.url, decode_responses=True)
    minute_key, day_key = counts_key("agents", 60, int(T0 // 60)), counts_key("agents", DAY, int(T0 // DAY))
    assert 0 < raw.ttl(minute_key) <= DAY + 60 and DAY + 60 < raw.ttl(day_key) <= 2 * DAY
    raw.close()
    store.close()


def test_a_batch_applied_after_its_write_timed_out_is_counted_once(server: RedisServer, tmp_path: Path) -> None:
    store = _store(server.url, tmp_path, socket_timeout=scaled(1.0))
    first, after = _varied(50, seed=2), _varied(50, seed=4)
    # One entry (a few records of a sandbox within seconds): small enough to wait whole in the socket's buffer.
    late = [replace(item, sandbox="sbx-0", ts=T0 - 59.5 + index) for index, item in enumerate(_varied(5, seed=3))]
    store.write(first)
    server.pause()  # the batch waits in the socket, the client gives up, then the server applies it anyway
    try:
        store.write(late)
    finally:
        server.resume()
    assert store.spooled == 5
    raw = redis.Redis.from_url(server.url, decode_responses=True)
    entries = sum(len(list(entry_chunks([r for r in first + late if r.sandbox == f"sbx-{i}"]))) for i in range(4))
    eventually(lambda: sum(int(raw.xlen(stream_key(f"sbx-{i}"))) for i in range(4)) == entries)
    store.write(after)  # replays the spooled batch first: its records are duplicates, its counts too
    assert store.spool_pending == 0 and store.duplicates == 5
    _check_counts(store, first + late + after)
    raw.close()
    store.close()


def test_redis_killed_mid_run_counts_each_attempt_once(server: RedisServer, tmp_path: Path) -> None:
    store = _store(server.url, tmp_path)
    batches = [_varied(40, seed=10 + index) for index in range(8)]
    for batch in batches[:3]:
        store.write(batch)
    server.kill()
    for batch in batches[3:6]:
        store.write(batch)
    server.start()
    for batch in batches[6:]:
        store.write(batch)
    store.drain(force=True)
    assert store.spool_pending == 0 and store.written == 320
    _check_counts(store, [item for batch in batches for item in batch])
    store.close()


@pytest.fixture
def cluster(redis_factory: RedisFactory) -> Iterator[list[RedisServer]]:
    nodes = redis_factory.cluster(3)
    yield nodes
    redis_factory.discard(*nodes)


def test_cluster_counters_live_beside_their_records_and_survive_a_failed_master(
    cluster: list[RedisServer], tmp_path: Path
) -> None:
    store = _store(f"redis+cluster://127.0.0.1:{cluster[0].port}", tmp_path, socket_timeout=scaled(2.0))
    batches = [_varied(60, seed=20 + index) for index in range(4)]
    store.write(batches[0])
    victim = cluster[2]
    victim.kill()
    store.write(batches[1])  # the part bound for live masters may land: the replay must not count it twice
    victim.start()
    eventually(lambda: cluster_ok(victim), timeout=30, interval=0.1)

    def drained() -> bool:
        store.drain(force=True)
        return store.spool_pending == 0

    eventually(drained, timeout=30, interval=0.1)
    for batch in batches[2:]:
        store.write(batch)
    _check_counts(store, [item for batch in batches for item in batch])
    store.close()
