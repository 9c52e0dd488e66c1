"""Walks over one sandbox's records by time (egress/record/walk.py) against a real redis-server: index pages that go
on from the last score read (an entry written meanwhile is neither read twice nor shifts the walk), first pages of
several sandboxes read at once, count updates folded across entries, in both directions."""

from __future__ import annotations

import dataclasses
import itertools
import random
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from egress.record import layout, walk
from egress.record.read_cache import EntryCache
from egress.record.redis_facade import Arg, RedisFacade, Script
from egress.record.schema import AttemptRecord, make_id
from egress.record.store import RecordStore
from tests.record import record
from tests.redis_server import RedisFactory
from tests.waiting import scaled

T0 = 1_700_000_000.0


@pytest.fixture
def store(redis_factory: RedisFactory) -> Iterator[RecordStore]:
    server = redis_factory.server()
    with tempfile.TemporaryDirectory(prefix="egt-walk-") as spool:
        made = RecordStore(server.url, Path(spool), "gw1", retry_interval=0.0, socket_timeout=scaled(5.0))
        yield made
        made.close()
    redis_factory.discard(server)


@pytest.fixture
def small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    """Entries of two records, read two index members at a time: every walk crosses many pages."""
    monkeypatch.setattr(layout, "CHUNK", 2)
    monkeypatch.setattr(walk, "FIRST_PAGE", 2)
    monkeypatch.setattr(walk, "MAX_PAGE", 2)


def _order(item: AttemptRecord) -> tuple[float, str]:
    return item.ts, item.id


@pytest.mark.usefixtures("small_pages")
@pytest.mark.parametrize("descending", [True, False])
def test_entries_written_during_a_walk_are_neither_read_twice_nor_shift_it(
    store: RecordStore, descending: bool
) -> None:
    written = [record(T0 + index, sport=index) for index in range(20)]
    for start in range(0, 20, 2):  # one entry per write, in time order
        store.write(written[start : start + 2])
    records = walk.records_by_time(store.redis, "agents", 0, 2e9, descending=descending)
    got = [next(records) for _ in range(3)]
    # Newer entries (descending: they go in ahead of the walk's place in the index) and older ones (ascending).
    store.write([record(T0 + 100 + index, sport=100 + index) for index in range(6)])
    store.write([record(T0 - 100 + index, sport=200 + index) for index in range(6)])
    got += list(records)
    ids = [item.id for item in got]
    assert len(ids) == len(set(ids)), "a record was handed out twice"
    assert [_order(item) for item in got] == sorted(map(_order, got), reverse=descending)
    assert set(ids) >= {item.id for item in written}


def test_first_pages_of_every_sandbox_in_one_round_trip(store: RecordStore, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(5)
    names = ["a", "b", "c", ""]
    store.write([record(T0 + rng.choice(range(0, 300, 3)), sandbox=rng.choice(names), sport=n) for n in range(200)])
    afters = [None, (T0 + 150, "~"), (T0 + 150, ""), None]
    expected = {
        descending: [
            list(walk.records_by_time(store.redis, name, T0 + 10, T0 + 280, descending=descending, after=after))
            for name, after in zip(names, afters, strict=True)
        ]
        for descending in (True, False)
    }
    singles: list[Script[Any]] = []
    real_run = RedisFacade.run

    def counted_run(self: RedisFacade, script: Script[Any], keys: Sequence[str], args: Sequence[Arg]) -> Any:
        singles.append(script)
        return real_run(self, script, keys, args)

    monkeypatch.setattr(RedisFacade, "run", counted_run)
    for descending in (True, False):
        merged = walk.walks(store.redis, names, T0 + 10, T0 + 280, afters, descending=descending)
        assert [list(records) for records in merged] == expected[descending]
    assert singles == [], "each sandbox fits in its first page: no walk should have read another"


@pytest.mark.usefixtures("small_pages")
def test_count_updates_in_later_entries_fold_into_their_record_in_either_direction(store: RecordStore) -> None:
    rng = random.Random(11)
    attempts = [record(T0 + rng.choice((0, 0, 1, 2)), sport=index) for index in range(12)]
    store.write(attempts)
    updates = [
        dataclasses.replace(base, id=make_id(base.ts, (900 + index).to_bytes(10, "big")), update_of=base.id, count=3)
        for index, base in enumerate(attempts[::3])
    ]
    store.write(updates[:2])
    store.write(updates[2:])
    for descending in (True, False):
        got = list(walk.records_by_time(store.redis, "agents", 0, 2e9, descending=descending))
        assert sorted(item.id for item in got) == sorted(item.id for item in attempts)
        assert {item.id: item.count for item in got} == {
            item.id: 1 + 3 * any(update.update_of == item.id for update in updates) for item in attempts
        }
        assert [_order(item) for item in got] == sorted(map(_order, got), reverse=descending)
        assert not any(item.update_of for item in got)


def test_a_walk_that_stops_early_fetches_the_entries_it_looked_at_not_the_whole_index_page(
    store: RecordStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(layout, "CHUNK", 1)  # one entry per record, far apart: no entry needs another's lookahead
    monkeypatch.setattr(walk, "FIRST_PAGE", 64)
    monkeypatch.setattr(walk, "FIRST_CHUNK", 4)
    store.write([record(T0 + 100.0 * index, sport=index) for index in range(64)])
    fetched: list[str] = []
    real_xrange_each = RedisFacade.xrange_each

    def counted(self: RedisFacade, stream: str, entry_ids: Sequence[str]) -> Any:
        fetched.extend(entry_ids)
        return real_xrange_each(self, stream, entry_ids)

    monkeypatch.setattr(RedisFacade, "xrange_each", counted)
    monkeypatch.setattr(walk, "ENTRIES", EntryCache())  # nothing cached from other tests
    newest = list(itertools.islice(walk.records_by_time(store.redis, "agents", 0, 2e9, descending=True), 3))
    assert [item.ts for item in newest] == [T0 + 6300.0, T0 + 6200.0, T0 + 6100.0]
    assert len(fetched) == 4, "one chunk of the 64 entries the index page named"
    rest = list(walk.records_by_time(store.redis, "agents", 0, 2e9, descending=True))
    assert len(rest) == 64 and len(set(fetched)) == 64, "and the whole page once the walk goes on"


@pytest.mark.parametrize("seed", range(3))
def test_overlapping_entries_with_shared_times_come_out_in_order_folded(store: RecordStore, seed: int) -> None:
    """Entries of a few records that overlap in time (written out of order, times shared within and across
    entries, count updates in later entries): every window and starting place gives the records in exact order,
    each once with its total count, as sorting them all would."""
    rng = random.Random(seed)
    attempts = [record(T0 + rng.randrange(40) / 2, sport=index) for index in range(150)]
    for start in range(0, len(attempts), 7):  # batches of records scattered over the whole span
        store.write(attempts[start : start + 7])
    extra = {item.id: 0 for item in attempts}
    for number, base in enumerate(rng.sample(attempts, 20)):
        extra[base.id] += 2
        update = make_id(base.ts, (5000 + number).to_bytes(10, "big"))
        store.write([dataclasses.replace(base, id=update, update_of=base.id, count=2)])
    for _ in range(12):
        low, high = sorted((T0 - 1 + rng.random() * 22, T0 - 1 + rng.random() * 22))
        descending = rng.random() < 0.5
        inside = sorted((item for item in attempts if low <= item.ts <= high), key=_order, reverse=descending)
        after = _order(rng.choice(inside)) if inside and rng.random() < 0.5 else None
        if after is not None:
            inside = [item for item in inside if (_order(item) < after if descending else _order(item) > after)]
        got = list(walk.records_by_time(store.redis, "agents", low, high, descending=descending, after=after))
        assert [item.id for item in got] == [item.id for item in inside]
        assert [item.count for item in got] == [1 + extra[item.id] for item in inside]
