"""RecordStore against real redis-server processes (and a real three-master Redis Cluster), each the test's own."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from egress.record import layout, walk
from egress.record.aggregate import Aggregator
from egress.record.layout import (
    ENTRY_COUNT,
    ENTRY_RECORDS,
    decode_entry,
    encode_entry,
    index_key,
    seen_key,
    state_key,
    stream_key,
)
from egress.record.schema import AttemptRecord
from egress.record.store import RecordStore
from tests.record import record
from tests.redis_server import RedisFactory, RedisServer, cluster_ok
from tests.waiting import eventually, scaled

T0 = 1_700_000_000.0
"""Records' own times: retention counts from arrival (Redis's clock), never from these."""
DAY = 86400


@pytest.fixture
def cluster(redis_factory: RedisFactory) -> Iterator[list[RedisServer]]:
    nodes = redis_factory.cluster(3)
    yield nodes
    redis_factory.discard(*nodes)


def _store(url: str, spool: Path, **options: object) -> RecordStore:
    settings: dict[str, object] = {"retry_interval": 0.0, "socket_timeout": scaled(5.0)}
    settings.update(options)
    return RecordStore(url, spool, "gw1", **settings)  # type: ignore[arg-type]


def _batch(start: int, size: int, sandbox: str = "agents") -> list[AttemptRecord]:
    return [record(ts=T0 - 3600 + start + index, sandbox=sandbox, sport=start + index) for index in range(size)]


def _stream_ids(raw: redis.Redis, sandbox: str = "agents") -> list[str]:
    """Record ids in stream order (entries in arrival order, records by time within an entry)."""
    entries: list[tuple[str, dict[str, Any]]] = raw.xrange(stream_key(sandbox))  # type: ignore[assignment]
    return [item.id for _, fields in entries for item in decode_entry(fields)]


def _read_all(store: RecordStore, sandbox: str = "agents", page: int = 7, **query: object) -> list[AttemptRecord]:
    out: list[AttemptRecord] = []
    cursor = None
    for _ in range(10_000):
        records, cursor = store.read(sandbox, count=page, cursor=cursor, **query)  # type: ignore[arg-type]
        out += records
        if cursor is None:
            return out
    raise AssertionError("pagination did not end")


def test_write_then_read_back_by_time_with_pages(server: RedisServer, raw: redis.Redis, tmp_path: Path) -> None:
    store = _store(server.url, tmp_path)
    written = _batch(0, 50)
    store.write(written[25:])  # arrival order differs from time order: reads follow the records' time
    store.write(written[:25])
    assert (store.written, store.spooled, store.redis_errors) == (50, 0, 0)
    assert _read_all(store) == written
    assert _read_all(store, reverse=True) == written[::-1]
    middle = _read_all(store, start_ts=written[10].ts, end_ts=written[19].ts)
    assert middle == written[10:20]
    assert store.read("agents", count=3)[0] == written[:3]
    assert store.read("nobody") == ([], None)
    assert store.sandboxes() == ["agents"]
    assert raw.ttl(seen_key("agents", written[0].id)) > 29 * 86400


def test_equal_timestamps_page_without_loss_or_repeat(server: RedisServer, tmp_path: Path) -> None:
    store = _store(server.url, tmp_path)
    same = [record(ts=T0, sport=port) for port in range(23)]
    store.write(same)
    forward = _read_all(store, page=4)
    assert sorted(item.id for item in forward) == sorted(item.id for item in same)
    assert len(forward) == 23
    assert len({item.id for item in _read_all(store, page=5, reverse=True)}) == 23


def test_reads_by_time_are_exact_across_small_entries_and_index_pages(
    server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries of 3 records read 1 then 2 index entries at a time: every page edge and entry edge falls somewhere
    in runs of equal times, in records written out of time order over several batches."""
    monkeypatch.setattr(layout, "CHUNK", 3)
    monkeypatch.setattr(walk, "FIRST_PAGE", 1)
    monkeypatch.setattr(walk, "MAX_PAGE", 2)
    rng = random.Random(7)
    written = [record(ts=T0 - 1000 + rng.choice(range(0, 400, 5)) + rng.choice((0, 0.5)), sport=i) for i in range(150)]
    store = _store(server.url, tmp_path)
    arrival = written[:]
    rng.shuffle(arrival)
    for start in range(0, 150, 37):
        store.write(arrival[start : start + 37])
    ordered = sorted(written, key=lambda item: (item.ts, item.id))
    assert _read_all(store, page=4) == ordered
    assert _read_all(store, page=9, reverse=True) == ordered[::-1]
    for _ in range(10):
        low, high = sorted(rng.uniform(T0 - 1100, T0 - 500) for _ in range(2))
        window = [item for item in ordered if low <= item.ts <= high]
        assert _read_all(store, page=rng.randint(1, 8), start_ts=low, end_ts=high) == window
        assert _read_all(store, page=rng.randint(1, 8), start_ts=low, end_ts=high, reverse=True) == window[::-1]


def test_gateway_is_stamped_and_odd_sandbox_names_stay_in_their_hash_tag(server: RedisServer, tmp_path: Path) -> None:
    store = _store(server.url, tmp_path)
    odd = ["a}b{c", "", "x:y%z", "~"]
    store.write([record(ts=T0, sandbox=name, gateway="") for name in odd])
    assert store.sandboxes() == sorted(odd)
    for name in odd:
        [found], _ = store.read(name)
        assert found.sandbox == name and found.gateway == "gw1"
    assert len({stream_key(name) for name in odd}) == 4


def test_bad_cursor_and_count_are_value_errors(server: RedisServer, tmp_path: Path) -> None:
    store = _store(server.url, tmp_path)
    for cursor in ("junk", "1.0:", "x:1-0"):
        with pytest.raises(ValueError, match="cursor"):
            store.read("agents", cursor=cursor)
    with pytest.raises(ValueError, match="count"):
        store.read("agents", count=0)


def test_retention_by_size_drops_the_oldest_entries(server: RedisServer, raw: redis.Redis, tmp_path: Path) -> None:
    store = _store(server.url, tmp_path, retention_max_len=20)
    written = _batch(0, 300)
    for start in range(0, 300, 10):
        store.write(written[start : start + 10])  # one entry of 10 each
    assert (raw.zcard(index_key("agents")), raw.xlen(stream_key("agents"))) == (2, 2)
    assert raw.hget(state_key("agents"), "records") == "20"
    assert _read_all(store) == written[-20:]
    # Entries hold at most the retention (20): 20 + 5. Storing the 20 drops the two older entries; storing the
    # 5 drops the 20 (whole entries go, oldest first, never the one just stored): at most max_records are kept.
    store.write(_batch(1000, 25))
    assert raw.hget(state_key("agents"), "records") == "5"
    assert [item.sport for item in _read_all(store)] == list(range(1020, 1025))


def _refused(start: int, size: int) -> list[AttemptRecord]:
    """Records the policy alone made (not findings), at the times `_batch` gives."""
    return [
        record(ts=T0 - 3600 + start + index, sport=start + index, category="policy", protocol="tcp",
               reason="not-allowlisted", detector="policy")
        for index in range(size)
    ]  # fmt: skip


def _held(raw: redis.Redis) -> tuple[int, int, int, int]:
    """The stream's records and findings as its state says, then as its entries hold them (they must agree)."""
    entries: list[tuple[str, dict[str, str]]] = raw.xrange(stream_key("agents"))  # type: ignore[assignment]
    held = sum(int(fields[ENTRY_COUNT]) for _, fields in entries)
    findings = sum(int(fields[ENTRY_COUNT]) for _, fields in entries if "f" in fields)
    state = raw.hgetall(state_key("agents"))
    return int(state["records"]), int(state["findings"]), held, findings


def test_a_flood_of_refusals_does_not_push_a_finding_out(server: RedisServer, raw: redis.Redis, tmp_path: Path) -> None:
    store = _store(server.url, tmp_path, retention_max_len=20)
    [mining] = _batch(0, 1)
    store.write([mining])
    for start in range(1, 301, 10):  # red team 14: the agent's own refusals, 15 times the retention
        store.write(_refused(start, 10))
    kept = _read_all(store)
    assert mining in kept
    assert [item.sport for item in kept if item is not mining and item.category == "policy"] == list(range(281, 301))
    assert _held(raw) == (21, 1, 21, 1)


def test_findings_past_their_own_budget_go_oldest_first(server: RedisServer, raw: redis.Redis, tmp_path: Path) -> None:
    store = _store(server.url, tmp_path, retention_max_len=20)
    refused = _refused(0, 10)
    store.write(refused)
    for start in range(10, 110, 10):
        store.write(_batch(start, 10))
    kept = _read_all(store)
    assert [item.sport for item in kept if item.category == "mining"] == list(range(90, 110))
    assert [item for item in kept if item.category == "policy"] == refused  # the other kind's budget is its own
    assert _held(raw) == (30, 20, 30, 20)


def test_mixed_batches_keep_each_kind_within_its_budget(server: RedisServer, raw: redis.Redis, tmp_path: Path) -> None:
    store = _store(server.url, tmp_path, retention_max_len=25)
    rng = random.Random(14)
    start = 0
    for _ in range(60):
        size = rng.randint(1, 12)
        batch = [*_batch(start, size), *_refused(start + 1000, rng.randint(0, 12))]
        store.write(batch)
        start += size + 20
        records, findings, held, held_findings = _held(raw)
        assert (records, findings) == (held, held_findings)
        assert findings <= 25 + 11 and records - findings <= 25 + 11  # within one entry of each budget
    assert sorted(item.sport for item in _read_all(store) if item.category == "mining")[-1] == start - 21


def _arrived_long_ago(raw: redis.Redis, records: list[AttemptRecord], days: float) -> None:
    """Put ``records`` in as one entry that arrived ``days`` ago by Redis's clock (its stream id), as the store
    writes entries: the way to have an old arrival without waiting for one."""
    seconds, micros = raw.time()
    arrived = f"{int((seconds + micros / 1e6 - days * DAY) * 1000)}-0"
    raw.xadd(stream_key("agents"), {ENTRY_COUNT: len(records), ENTRY_RECORDS: encode_entry(records)}, id=arrived)
    raw.zadd(index_key("agents"), {arrived: records[0].ts})
    raw.hincrby(state_key("agents"), "records", len(records))


def test_retention_by_age_counts_from_arrival(server: RedisServer, raw: redis.Redis, tmp_path: Path) -> None:
    store = _store(server.url, tmp_path, retention_max_age_days=1)
    stale = [record(ts=T0 + index) for index in range(3)]
    _arrived_long_ago(raw, stale, days=2)
    made_long_ago = [record(ts=T0 - 5 * DAY + index, sport=index) for index in range(5)]
    store.write(made_long_ago)  # records two days older than the stale ones, arriving now: kept
    assert raw.hget(state_key("agents"), "records") == "5"
    assert _read_all(store) == made_long_ago
    # The seen keys (replay protection) live as long as the retention, counted from the write.
    assert DAY - 600 < raw.ttl(seen_key("agents", made_long_ago[0].id)) <= DAY
    assert (raw.xlen(stream_key("agents")), raw.zcard(index_key("agents"))) == (1, 1)


def test_retention_by_age_keeps_an_entry_younger_than_the_retention(
    server: RedisServer, raw: redis.Redis, tmp_path: Path
) -> None:
    store = _store(server.url, tmp_path, retention_max_age_days=3)
    young = [record(ts=T0 + index) for index in range(3)]
    _arrived_long_ago(raw, young, days=2)
    fresh = record(ts=T0 + 10)
    store.write([fresh])
    assert (raw.xlen(stream_key("agents")), raw.hget(state_key("agents"), "records")) == (2, "4")
    assert _read_all(store) == [*young, fresh]


def test_redis_killed_mid_run_then_restarted_loses_and_duplicates_nothing(server: RedisServer, tmp_path: Path) -> None:
    store = _store(server.url, tmp_path)
    batches = [_batch(index * 10, 10) for index in range(12)]
    for batch in batches[:4]:
        store.write(batch)
    server.kill()
    for batch in batches[4:8]:
        store.write(batch)  # never raises: the batch goes to the spool
    assert store.spooled == 40 and store.redis_errors >= 1 and store.written == 40
    assert store.drain(force=True) == 0  # still down
    server.start()
    store.write(batches[8])  # queues behind the spool, then the spool drains in order
    store.drain(force=True)
    for batch in batches[9:]:
        store.write(batch)
    assert store.spool_pending == 0
    raw = redis.Redis.from_url(server.url, decode_responses=True)
    expected = [item.id for batch in batches for item in batch]
    assert _stream_ids(raw) == expected  # exactly once each, and in order
    assert [item.id for item in _read_all(store)] == expected
    assert (store.written, store.duplicates, store.lost) == (120, 0, 0)
    raw.close()


def test_a_batch_applied_after_its_write_timed_out_is_not_stored_twice(
    server: RedisServer, raw: redis.Redis, tmp_path: Path
) -> None:
    store = _store(server.url, tmp_path, socket_timeout=scaled(1.0))
    first, late, after = _batch(0, 5), _batch(100, 5), _batch(200, 5)
    store.write(first)
    assert store.written == 5
    # A stopped server: our batch waits in its socket buffer, the client gives up after its timeout, then the
    # server wakes up and applies the batch anyway. (Stopped for certain before the write, for as long as it takes.)
    server.pause()
    try:
        store.write(late)
    finally:
        server.resume()
    assert store.spooled == 5 and store.redis_errors >= 1  # the write, and perhaps a drain while stopped
    eventually(lambda: _stream_ids(raw)[-5:] == [item.id for item in late])  # the server did apply it
    store.write(after)  # drains the replayed batch first
    assert store.spool_pending == 0
    assert store.duplicates == 5
    assert _stream_ids(raw) == [item.id for item in first + late + after]
    assert len(_read_all(store)) == 15


def test_the_spool_outlives_the_process(server: RedisServer, raw: redis.Redis, tmp_path: Path) -> None:
    server.kill()
    crashed = _store(server.url, tmp_path)
    spooled = _batch(0, 30)
    crashed.write(spooled[:10])
    crashed.write(spooled[10:])
    assert crashed.spooled == 30
    crashed.close()
    del crashed
    server.start()
    successor = _store(server.url, tmp_path)
    assert successor.spool_pending == 2
    assert successor.drain() == 2
    assert _stream_ids(raw) == [item.id for item in spooled]


def test_a_full_spool_counts_what_it_lost(server: RedisServer, tmp_path: Path) -> None:
    server.kill()
    store = _store(server.url, tmp_path, spool_max_bytes=3000)
    for start in range(0, 40, 2):
        store.write(_batch(start, 2))
    assert store.lost > 0
    assert store.spooled + store.lost == 40


def test_ping_says_whether_redis_answers(server: RedisServer, tmp_path: Path) -> None:
    store = _store(server.url, tmp_path)
    assert store.ping()
    server.kill()
    assert not store.ping()


def test_a_flood_of_ten_thousand_becomes_a_handful_of_records(server: RedisServer, tmp_path: Path) -> None:
    store = _store(server.url, tmp_path)
    aggregator = Aggregator(window=5.0, max_keys=1000)
    for index in range(10_000):
        now = index * 0.003
        store.write(aggregator.add(record(ts=T0 + now, sport=1024 + index % 60000), now=now))
    store.write(aggregator.flush(30.0, force=True))
    stored = _read_all(store, page=100)
    assert 2 <= len(stored) <= 10
    assert sum(item.count for item in stored) == 10_000


def test_cluster_write_read_and_replay(cluster: list[RedisServer], tmp_path: Path) -> None:
    store = _store(f"redis+cluster://127.0.0.1:{cluster[0].port}", tmp_path)
    sandboxes = [f"sbx-{index}" for index in range(12)]
    written = {name: _batch(0, 5, sandbox=name) for name in sandboxes}
    everything = [item for batch in written.values() for item in batch]
    store.write(everything)
    assert store.written == 60 and store.spooled == 0
    store.write(everything)  # a replay: nothing new
    assert store.duplicates == 60
    for name in sandboxes:
        assert _read_all(store, sandbox=name, page=2) == written[name]
    assert store.sandboxes() == sorted(sandboxes)
    keys_per_node = [int(node.cli("dbsize")) for node in cluster]
    assert sum(1 for count in keys_per_node if count > 0) >= 2  # the sandboxes really are spread out
    store.close()


def test_cluster_master_killed_and_restarted_loses_and_duplicates_nothing(
    cluster: list[RedisServer], tmp_path: Path
) -> None:
    store = _store(f"redis+cluster://127.0.0.1:{cluster[0].port}", tmp_path, socket_timeout=scaled(2.0))
    sandboxes = [f"sbx-{index}" for index in range(9)]
    batches = [[item for name in sandboxes for item in _batch(step * 3, 3, sandbox=name)] for step in range(6)]
    store.write(batches[0])
    victim = cluster[2]
    victim.kill()
    store.write(batches[1])  # the part bound for live masters may land: the replay must not double it
    store.write(batches[2])
    assert store.spooled == 2 * len(batches[1]) and store.redis_errors >= 1
    victim.start()
    eventually(lambda: cluster_ok(victim), timeout=30, interval=0.1)

    def drained() -> bool:
        store.drain(force=True)
        return store.spool_pending == 0

    eventually(drained, timeout=30, interval=0.1)
    for batch in batches[3:]:
        store.write(batch)
    for name in sandboxes:
        expected = [item.id for batch in batches for item in batch if item.sandbox == name]
        assert [item.id for item in _read_all(store, sandbox=name)] == expected
    assert store.written == sum(len(batch) for batch in batches) and store.lost == 0
    store.close()
