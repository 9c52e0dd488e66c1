"""Queries (egress.record.query) against a real redis-server and a real three-master Redis Cluster on loopback:
cursor pages across sandboxes, filters, one attempt by id, counts, live follow, agent actions and their retention."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster

from egress.record import action_store, layout, query, stats, walk
from egress.record.actions import ActionRecord
from egress.record.layout import action_keys
from egress.record.query import AttemptFilter
from egress.record.schema import AttemptRecord
from egress.record.store import STORE_ERRORS, RecordStore
from tests.record import record
from tests.redis_server import RedisFactory, RedisServer, nowhere_url
from tests.waiting import eventually, scaled

NOW = 1_700_000_000.0
"""The records' and actions' times, and the stores' clock (injected): queries here take explicit windows."""


@pytest.fixture(scope="module")
def cluster(redis_factory: RedisFactory) -> list[RedisServer]:
    return redis_factory.cluster()


def _make(url: str, spool: Path, **options: Any) -> RecordStore:
    settings: dict[str, Any] = {"retry_interval": 0.0, "socket_timeout": scaled(5.0), "clock": lambda: NOW}
    settings.update(options)
    return RecordStore(url, spool, "gw1", **settings)


@pytest.fixture(params=["redis", "cluster"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RecordStore]:
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()
        made = _make(server.url, tmp_path)
    else:
        nodes: list[RedisServer] = request.getfixturevalue("cluster")
        for node in nodes:
            node.flush()
        made = _make(f"redis+cluster://127.0.0.1:{nodes[0].port}", tmp_path)
    yield made
    made.close()


def _raw(store: RecordStore) -> redis.Redis | redis.cluster.RedisCluster:
    """A redis-py client of the store's server, to look at the keys."""
    if store.cluster:
        return redis.cluster.RedisCluster.from_url(store.url, decode_responses=True)
    return redis.Redis.from_url(store.url, decode_responses=True)


def _all_pages(store: RecordStore, flt: AttemptFilter, page: int) -> list[AttemptRecord]:
    out: list[AttemptRecord] = []
    cursor = None
    for _ in range(100_000):
        records, cursor = query.list_attempts(store, flt, page, cursor)
        assert len(records) <= page
        out += records
        if cursor is None:
            return out
    raise AssertionError("pagination did not end")


def _newest_first(records: list[AttemptRecord]) -> list[AttemptRecord]:
    return sorted(records, key=lambda r: r.ts, reverse=True)


def _mixed(count: int = 120) -> list[AttemptRecord]:
    """Records over four sandboxes where many share a time (within and across sandboxes)."""
    rng = random.Random(7)
    out = []
    for index in range(count):
        out.append(
            record(
                ts=NOW - 600 + rng.choice([0, 0, 0, 1, 1, 2.5, 7, 30]) + (index % 5) * 60,
                sandbox=f"sbx-{index % 4}",
                sport=index,
                category=["mining", "tunnel", "policy"][index % 3],
                reason=["mining", "tunnel", "not-allowlisted"][index % 3],
                dst=f"203.0.113.{index % 7}",
                host=["pool.example.com", "", "a.b.tunnel.example.net"][index % 3],
            )
        )
    return out


@pytest.mark.parametrize("page", [1, 3, 7, 50, 500])
def test_pages_across_sandboxes_are_newest_first_and_neither_skip_nor_repeat(store: RecordStore, page: int) -> None:
    written = _mixed()
    rng = random.Random(3)
    shuffled = written[:]
    rng.shuffle(shuffled)
    store.write(shuffled[:60])
    store.write(shuffled[60:])
    got = _all_pages(store, AttemptFilter(), page)
    assert len(got) == len(written)
    assert {r.id for r in got} == {r.id for r in written}
    assert [r.ts for r in got] == sorted((r.ts for r in got), reverse=True)


def test_filters(store: RecordStore) -> None:
    written = _mixed()
    store.write(written)
    cases: list[tuple[AttemptFilter, Callable[[AttemptRecord], bool]]] = [
        (AttemptFilter(sandbox="sbx-1"), lambda r: r.sandbox == "sbx-1"),
        (AttemptFilter(category="tunnel"), lambda r: r.category == "tunnel"),
        (
            AttemptFilter(reason="not-allowlisted", sandbox="sbx-2"),
            lambda r: r.reason == "not-allowlisted" and r.sandbox == "sbx-2",
        ),
        (AttemptFilter(destination="203.0.113.3"), lambda r: r.dst == "203.0.113.3"),
        (AttemptFilter(destination="example.com"), lambda r: r.host == "pool.example.com"),
        (AttemptFilter(destination="TUNNEL.example.net."), lambda r: r.host.endswith("tunnel.example.net")),
        (AttemptFilter(destination="ample.com"), lambda r: False),
        (AttemptFilter(since=NOW - 480, until=NOW - 360), lambda r: NOW - 480 <= r.ts <= NOW - 360),
        (AttemptFilter(sandbox="nobody"), lambda r: False),
    ]
    for flt, keep in cases:
        expected = {r.id for r in written if keep(r)}
        got = _all_pages(store, flt, 4)
        assert {r.id for r in got} == expected, flt
        assert len(got) == len(expected)
        assert all(flt.matches(r) for r in got)


def test_a_selective_filter_gives_short_pages_within_the_scan_budget(
    store: RecordStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(query, "SCAN_BUDGET", 10)
    written = _mixed()
    store.write(written)
    flt = AttemptFilter(category="mining", sandbox="sbx-0")
    first, cursor = query.list_attempts(store, flt, 100, None)
    assert len(first) < 100
    assert cursor is not None
    assert {r.id for r in _all_pages(store, flt, 100)} == {r.id for r in written if flt.matches(r)}


def test_bad_arguments_are_value_errors(store: RecordStore) -> None:
    store.write(_mixed(10))
    for cursor in ["garbage", "", "W10", query.encode_cursor(1.0, "a", "1-0")[:-3]]:
        with pytest.raises(ValueError, match="cursor"):
            query.list_attempts(store, AttemptFilter(), 5, cursor)
    with pytest.raises(ValueError, match="inverted"):
        query.list_attempts(store, AttemptFilter(since=2.0, until=1.0), 5, None)
    with pytest.raises(ValueError, match="limit"):
        query.list_attempts(store, AttemptFilter(), 0, None)
    with pytest.raises(ValueError, match="by must be"):
        query.counts(store, 0, NOW, "colour")


def test_get_attempt_finds_any_sandbox(store: RecordStore) -> None:
    written = _mixed(40)
    store.write(written)
    for wanted in written[::7]:
        assert query.get_attempt(store, wanted.id) == wanted
    assert query.get_attempt(store, record(ts=NOW).id) is None
    assert query.get_attempt(store, "not-an-id") is None


def test_counts_sum_aggregates_by_each_field(store: RecordStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layout, "CHUNK", 3)  # many entry and page edges fall inside runs of equal times
    monkeypatch.setattr(walk, "MAX_PAGE", 2)
    written = [*_mixed(), record(ts=NOW - 30, sandbox="sbx-9", count=40, first_ts=NOW - 30, last_ts=NOW - 20)]
    store.write(written)
    for by in query.COUNT_BY:
        expected: dict[str, int] = {}
        for r in written:
            key = {"destination": r.host or r.dst}.get(by) or getattr(r, by)
            expected[key] = expected.get(key, 0) + r.count
        assert query.counts(store, NOW - 10_000, NOW, by) == expected
        assert list(query.counts(store, NOW - 10_000, NOW, by).values()) == sorted(expected.values(), reverse=True)
    window = query.counts(store, NOW - 480, NOW - 360, "sandbox")  # whole minutes: the counters' resolution
    first, last = stats.minute(NOW - 480), stats.minute(NOW - 360)
    assert sum(window.values()) == sum(1 for r in written if first <= stats.minute(r.ts) <= last)
    assert query.counts(store, NOW + 1, NOW + 2, "reason") == {}


def test_follow_returns_what_arrives_after_its_positions(store: RecordStore) -> None:
    store.write(_mixed(8))
    records, after = query.follow(store, None, 300)
    assert records == []  # what was there before is not followed
    fresh = [record(ts=NOW + 1, sandbox="sbx-1", sport=1), record(ts=NOW + 2, sandbox="brand-new", sport=2)]
    writer = threading.Thread(target=store.write, args=(fresh,))  # arrives while follow may be blocked waiting
    writer.start()
    got: list[AttemptRecord] = []

    def both_arrived() -> bool:
        nonlocal after
        records, after = query.follow(store, after, 1000)
        got.extend(records)
        assert len(got) >= 2, got
        return True

    try:
        eventually(both_arrived, timeout=10, interval=0)
    finally:
        writer.join()
    assert got == fresh
    assert query.follow(store, after, 50) == ([], after)


def test_attempts_for_sandbox_oldest_first(store: RecordStore) -> None:
    written = _mixed()
    store.write(written)
    mine = sorted((r for r in written if r.sandbox == "sbx-3"), key=lambda r: r.ts)
    got = query.attempts_for_sandbox(store, "sbx-3", None, None, 1000)
    assert [r.ts for r in got] == [r.ts for r in mine]
    assert {r.id for r in got} == {r.id for r in mine}
    assert len(query.attempts_for_sandbox(store, "sbx-3", None, None, 5)) == 5


def _act(name: str, start: float, end: float | None, sandbox: str = "agents", **extra: Any) -> ActionRecord:
    return ActionRecord(
        sandbox, name, "shell_command", f"run {name}", NOW + start, None if end is None else NOW + end, **extra
    )


def test_actions_are_idempotent_by_sandbox_and_id(store: RecordStore) -> None:
    first = _act("a1", 0, None, received=NOW)
    assert query.write_actions(store, [first, _act("a1", 0, 5, sandbox="other")]) == 2
    finished = _act("a1", 0, 4, received=NOW + 1)
    query.write_actions(store, [finished, finished])
    assert query.read_actions(store, "agents", None, None) == [finished]
    assert [a.end for a in query.read_actions(store, "other", None, None)] == [NOW + 5]
    stamped = _act("a2", 1, 2)
    query.write_actions(store, [stamped])
    assert query.read_actions(store, "agents", NOW + 1.5, NOW + 1.5)[1].received > 0
    assert query.write_actions(store, []) == 0


def test_actions_read_by_overlapping_window(store: RecordStore) -> None:
    actions = [
        _act("long", -5000, 5000),  # a long action starting far before the window
        _act("running", -9000, None),  # still running: overlaps everything after its start
        _act("before", -100, -50),
        _act("edge", -50, 0),  # ends on the window's start
        _act("inside", 10, 20),
        _act("after", 200, 300),
        _act("late-running", 250, None),
    ]
    query.write_actions(store, actions[::-1])
    names = [a.id for a in query.read_actions(store, "agents", NOW, NOW + 100)]
    assert names == ["running", "long", "edge", "inside"]
    assert [a.id for a in query.read_actions(store, "agents", NOW, NOW + 100, limit=2)] == ["running", "long"]
    assert [a.id for a in query.read_actions(store, "agents", NOW + 260, None)] == [
        "running",
        "long",
        "after",
        "late-running",
    ]
    assert [a.id for a in query.read_actions(store, "agents", None, NOW - 6000)] == ["running"]
    assert query.read_actions(store, "nobody", None, None) == []
    with pytest.raises(ValueError, match="limit"):
        query.read_actions(store, "agents", None, None, 0)


@pytest.mark.parametrize(
    ("since", "until"), [(0, 100), (260, None), (None, -6000), (None, None), (-60, 260), (9000, None)]
)
@pytest.mark.parametrize("limit", [1, 2, 10])
def test_newest_actions_are_the_last_of_the_window(
    store: RecordStore, since: float | None, until: float | None, limit: int
) -> None:
    query.write_actions(
        store,
        [
            _act("long", -5000, 5000),
            _act("running", -9000, None),
            _act("before", -100, -50),
            _act("edge", -50, 0),
            _act("inside", 10, 20),
            _act("after", 200, 300),
            _act("late-running", 250, None),
        ],
    )
    low = None if since is None else NOW + since
    high = None if until is None else NOW + until
    every = [a.id for a in query.read_actions(store, "agents", low, high, limit=1000)]
    newest, truncated = query.read_newest_actions(store, "agents", low, high, limit)
    assert [a.id for a in newest] == every[-limit:] if every else [a.id for a in newest] == []
    assert truncated == (len(every) > limit)


def test_newest_attempts_are_the_last_of_the_window(store: RecordStore) -> None:
    store.write([record(ts=NOW + i, sandbox="newest", host=f"h{i}.example") for i in range(7)])
    every = query.attempts_for_sandbox(store, "newest", None, None, 100)
    for limit in (1, 3, 7, 8):
        found, truncated = query.newest_attempts_for_sandbox(store, "newest", None, None, limit)
        assert found == every[-limit:] and truncated == (limit < 7)
    assert query.newest_attempts_for_sandbox(store, "newest", NOW + 2, NOW + 4, 2) == (every[3:5], True)


def test_actions_retention_by_count_and_age(store: RecordStore, tmp_path: Path) -> None:
    clock = [NOW]
    small = RecordStore(
        store.url,
        tmp_path / "small",
        "gw1",
        cluster=store.cluster,
        retention_max_len=5,
        retention_max_age_days=1,
        clock=lambda: clock[0],
    )
    try:
        query.write_actions(small, [_act(f"a{i}", i, i + 1) for i in range(8)])
        assert [a.id for a in query.read_actions(small, "agents", None, None)] == ["a3", "a4", "a5", "a6", "a7"]
        clock[0] = NOW + 86400 + 5.5
        query.write_actions(small, [_act("fresh", 86400, None)])
        assert [a.id for a in query.read_actions(small, "agents", None, None)] == ["a6", "a7", "fresh"]
        client = _raw(small)
        hash_key, by_start, by_end, _ = action_keys("agents")
        assert client.hlen(hash_key) == client.zcard(by_start) == client.zcard(by_end) == 3
        client.close()
    finally:
        small.close()


def test_many_actions_in_chunks(store: RecordStore) -> None:
    many = [_act(f"n{i:04d}", i * 0.5, i * 0.5 + 0.1, received=NOW) for i in range(action_store.ACTION_CHUNK * 2 + 7)]
    assert query.write_actions(store, many) == len(many)
    got = query.read_actions(store, "agents", None, None, limit=10_000)
    assert got == many


def test_queries_raise_store_errors_when_redis_is_away(tmp_path: Path) -> None:
    dead = _make(nowhere_url(), tmp_path)
    for call in (
        lambda: query.list_attempts(dead, AttemptFilter(), 5, None),
        lambda: query.read_actions(dead, "agents", None, None),
        lambda: query.write_actions(dead, [_act("x", 0, 1)]),
        lambda: query.follow(dead, None, 10),
    ):
        with pytest.raises(STORE_ERRORS):
            call()
