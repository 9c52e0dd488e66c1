from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import pytest

from egress.record.aggregate import Aggregator, fold
from egress.record.schema import AttemptRecord, make_id
from tests.record import record

_ids = itertools.count(10_000_000)


def _make_id(ts: float) -> str:
    return make_id(ts, next(_ids).to_bytes(10, "big"))


def _aggregator(window: float = 10.0, max_keys: int = 100, update_interval: float = 1.0) -> Aggregator:
    return Aggregator(window=window, max_keys=max_keys, make_id=_make_id, update_interval=update_interval)


def test_the_first_attempt_is_returned_at_once_and_repeats_as_a_count_update_of_it() -> None:
    aggregator = _aggregator()
    first = record(ts=100.0)
    assert aggregator.add(first, now=0.0) == [first]
    assert aggregator.add(record(ts=100.2), now=0.2) == []
    assert aggregator.add(record(ts=100.5, evidence="later"), now=0.5) == []
    assert aggregator.pending == 2
    assert aggregator.flush(now=1.1) == []  # the first repeat came at 0.2: its update is due at 1.2
    [update] = aggregator.flush(now=1.2)
    assert update.update_of == first.id and update.id != first.id
    assert (update.ts, update.count, update.first_ts, update.last_ts) == (100.0, 2, 100.2, 100.5)
    assert update.evidence == first.evidence
    assert aggregator.pending == 0 and aggregator.seen == 3 and aggregator.emitted == 2


def test_a_steady_stream_of_repeats_is_written_at_least_every_interval() -> None:
    aggregator = _aggregator(window=10.0, update_interval=1.0)
    first = record(ts=0.0)
    out = aggregator.add(first, now=0.0)
    for tick in range(1, 95):  # 9.4 s of repeats, ten a second, flushed every 0.1 s as the recorder does
        now = tick / 10
        out += aggregator.add(record(ts=now), now=now)
        out += aggregator.flush(now)
        assert aggregator.pending <= 10  # what a kill at this moment would lose: one interval's repeats
    out += aggregator.flush(9.5, force=True)
    updates = [item for item in out if item.update_of]
    assert [item.id for item in out if not item.update_of] == [first.id]
    assert all(item.update_of == first.id for item in updates)
    assert sum(item.count for item in updates) == 94
    assert 9 <= len(updates) <= 10
    spans = [(item.first_ts, item.last_ts) for item in updates]
    assert all(left[1] < right[0] for left, right in itertools.pairwise(spans))
    [folded] = fold(out)
    assert (folded.id, folded.count, folded.first_ts, folded.last_ts) == (first.id, 95, 0.0, 9.4)


def test_a_key_repeating_past_its_window_gets_a_new_record() -> None:
    aggregator = _aggregator(window=10.0)
    first = record(ts=0.0)
    aggregator.add(first, now=0.0)
    aggregator.add(record(ts=9.95), now=9.95)
    later = record(ts=10.0)
    out = aggregator.add(later, now=10.0)
    assert [(item.update_of, item.count) for item in out] == [(first.id, 1), ("", 1)]
    assert out[1] is later


def test_a_quiet_key_is_forgotten_so_its_next_attempt_is_written_at_once() -> None:
    aggregator = _aggregator()
    aggregator.add(record(ts=1.0), now=0.0)
    assert aggregator.flush(now=10.0) == []
    assert len(aggregator) == 0
    later = record(ts=50.0)
    assert aggregator.add(later, now=50.0) == [later]


def test_force_returns_every_pending_update_and_keeps_the_keys() -> None:
    aggregator = _aggregator(update_interval=1.0)
    firsts = [record(dport=port) for port in (1, 2, 3)]
    for item in firsts:
        aggregator.add(item, now=0.0)
    aggregator.add(record(dport=1), now=0.1)
    aggregator.add(record(dport=3, count=5), now=0.2)
    out = aggregator.flush(now=0.3, force=True)
    assert sorted((item.update_of, item.count) for item in out) == sorted([(firsts[0].id, 1), (firsts[2].id, 5)])
    assert len(aggregator) == 3 and aggregator.pending == 0
    [update] = aggregator.add(record(dport=2), now=0.4) + aggregator.flush(now=0.5, force=True)
    assert (update.update_of, update.count) == (firsts[1].id, 1)


@pytest.mark.parametrize(
    "change",
    [
        {"sandbox": "other"},
        {"src": "10.77.0.3"},
        {"dst": "203.0.113.10"},
        {"dport": 443},
        {"transport": "udp"},
        {"reason": "tunnel"},
        {"protocol": "stratum-v2"},
    ],
)
def test_attempts_differing_in_any_key_field_are_not_merged(change: dict[str, Any]) -> None:
    aggregator = _aggregator()
    aggregator.add(record(), now=0.0)
    other = record(**change)
    assert aggregator.add(other, now=1.0) == [other]


def test_same_key_with_other_source_port_or_evidence_is_merged() -> None:
    aggregator = _aggregator()
    aggregator.add(record(sport=1), now=0.0)
    assert aggregator.add(record(sport=2, evidence="other"), now=1.0) == []


def test_flood_of_ten_thousand_becomes_a_handful_with_exact_counts() -> None:
    aggregator = _aggregator(window=5.0)
    out: list[AttemptRecord] = []
    for index in range(10_000):
        now = index * 0.003  # 30 seconds of flood
        out += aggregator.add(record(ts=1000.0 + now, sport=1024 + index % 60000), now=now)
    out += aggregator.flush(now=30.0, force=True)
    assert sum(item.count for item in out) == 10_000
    assert len(out) <= 6 + 30 + 6  # a record per window and an update per second (and one at each window's end)
    records = fold(out)
    assert 6 <= len(records) <= 7
    assert sum(item.count for item in records) == 10_000
    assert records[0].ts == 1000.0 and records[0].first_ts == 1000.0
    assert records[-1].last_ts == pytest.approx(1000.0 + 9999 * 0.003)
    spans = [(item.first_ts, item.last_ts) for item in records]
    assert all(left[1] < right[0] for left, right in itertools.pairwise(spans))
    assert len({item.id for item in out}) == len(out)


def test_memory_is_bounded_and_the_oldest_key_is_forgotten_with_its_update() -> None:
    aggregator = _aggregator(window=1000.0, max_keys=3, update_interval=100.0)
    firsts = {}
    for port in (1, 2, 3):
        [firsts[port]] = aggregator.add(record(dport=port), now=0.0)
        aggregator.add(record(dport=port), now=0.5)
    assert len(aggregator) == 3
    newcomer = record(dport=4)
    out = aggregator.add(newcomer, now=1.0)
    assert [(item.dport, item.count, item.update_of) for item in out] == [(1, 1, firsts[1].id), (4, 1, "")]
    assert len(aggregator) == 3
    rest = aggregator.flush(now=2.0, force=True)
    assert sorted((item.dport, item.count) for item in rest) == [(2, 1), (3, 1)]


def test_counts_of_already_aggregated_input_add_up() -> None:
    aggregator = _aggregator()
    first = record(ts=1.0)
    aggregator.add(first, now=0.0)
    aggregator.add(record(ts=5.0, count=4, first_ts=2.0, last_ts=5.0), now=1.0)
    aggregator.add(record(ts=7.0, count=3, first_ts=6.0, last_ts=7.0), now=1.5)
    [update] = aggregator.flush(now=20.0)
    assert (update.count, update.first_ts, update.last_ts, update.update_of) == (7, 2.0, 7.0, first.id)


def test_fold_adds_updates_into_their_record_and_an_orphan_stands_in_for_it() -> None:
    first, other = record(ts=1.0), record(ts=2.0, dport=1)
    updates = [
        dataclasses.replace(first, id=_make_id(1.0), count=2, first_ts=1.5, last_ts=3.0, update_of=first.id),
        dataclasses.replace(first, id=_make_id(1.0), count=3, first_ts=4.0, last_ts=6.0, update_of=first.id),
    ]
    orphan_of = _make_id(0.5)
    orphan = dataclasses.replace(other, id=_make_id(0.5), ts=0.5, count=7, first_ts=0.6, update_of=orphan_of)
    folded = fold([updates[1], first, orphan, other, updates[0]])
    assert [(item.id, item.count, item.first_ts, item.last_ts, item.update_of) for item in folded] == [
        (first.id, 6, 1.0, 6.0, ""),
        (other.id, 1, 2.0, 2.0, ""),
        (orphan_of, 7, 0.6, 2.0, ""),
    ]
    live = fold([orphan, first, updates[0]], stand_in=False)
    assert [(item.id, item.count, item.update_of) for item in live] == [
        (first.id, 3, ""),
        (orphan.id, 7, orphan_of),
    ]


@pytest.mark.parametrize(("window", "max_keys", "interval"), [(0.0, 1, 1.0), (1.0, 0, 1.0), (1.0, 1, 0.0)])
def test_bad_settings_are_refused(window: float, max_keys: int, interval: float) -> None:
    with pytest.raises(ValueError):
        Aggregator(window=window, max_keys=max_keys, update_interval=interval)
