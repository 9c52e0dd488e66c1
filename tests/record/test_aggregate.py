from __future__ import annotations

import itertools
from typing import Any

import pytest

from egress.record.aggregate import Aggregator
from egress.record.schema import AttemptRecord, make_id
from tests.record import record

_ids = itertools.count(10_000_000)


def _make_id(ts: float) -> str:
    return make_id(ts, next(_ids).to_bytes(10, "big"))


def _aggregator(window: float = 10.0, max_keys: int = 100) -> Aggregator:
    return Aggregator(window=window, max_keys=max_keys, make_id=_make_id)


def test_first_attempt_is_written_at_once_and_repeats_when_the_window_closes() -> None:
    aggregator = _aggregator()
    first = record(ts=100.0)
    assert aggregator.add(first, now=0.0) == [first]
    assert aggregator.add(record(ts=101.0), now=1.0) == []
    assert aggregator.add(record(ts=103.0, evidence="later"), now=3.0) == []
    assert aggregator.flush(now=9.9) == []
    [aggregate] = aggregator.flush(now=10.0)
    assert (aggregate.count, aggregate.first_ts, aggregate.last_ts, aggregate.ts) == (2, 101.0, 103.0, 101.0)
    assert aggregate.id not in {first.id} and aggregate.id > first.id
    assert aggregator.seen == 3 and aggregator.emitted == 2


def test_a_quiet_key_is_forgotten_so_its_next_attempt_is_written_at_once() -> None:
    aggregator = _aggregator()
    aggregator.add(record(ts=1.0), now=0.0)
    assert aggregator.flush(now=10.0) == []
    assert len(aggregator) == 0
    later = record(ts=50.0)
    assert aggregator.add(later, now=50.0) == [later]


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
    assert 2 <= len(out) <= 10
    assert sum(item.count for item in out) == 10_000
    assert out[0].count == 1 and out[0].ts == 1000.0
    assert out[-1].last_ts == pytest.approx(1000.0 + 9999 * 0.003)
    spans = [(item.first_ts, item.last_ts) for item in out[1:]]
    assert all(left[1] < right[0] for left, right in itertools.pairwise(spans))
    assert len({item.id for item in out}) == len(out)


def test_memory_is_bounded_and_the_oldest_window_is_closed_early() -> None:
    aggregator = _aggregator(window=1000.0, max_keys=3)
    for port in (1, 2, 3):
        aggregator.add(record(dport=port), now=0.0)
        aggregator.add(record(dport=port), now=0.5)
    assert len(aggregator) == 3
    newcomer = record(dport=4)
    out = aggregator.add(newcomer, now=1.0)
    assert [(item.dport, item.count) for item in out] == [(1, 1), (4, 1)]
    assert len(aggregator) == 3
    rest = aggregator.flush(now=2.0, force=True)
    assert sorted((item.dport, item.count) for item in rest) == [(2, 1), (3, 1)]
    assert len(aggregator) == 0


def test_counts_of_already_aggregated_input_add_up() -> None:
    aggregator = _aggregator()
    aggregator.add(record(), now=0.0)
    aggregator.add(record(ts=5.0, count=4, first_ts=2.0, last_ts=5.0), now=1.0)
    aggregator.add(record(ts=7.0, count=3, first_ts=6.0, last_ts=7.0), now=2.0)
    [aggregate] = aggregator.flush(now=20.0)
    assert (aggregate.count, aggregate.first_ts, aggregate.last_ts) == (7, 2.0, 7.0)


@pytest.mark.parametrize(("window", "max_keys"), [(0.0, 1), (1.0, 0)])
def test_bad_settings_are_refused(window: float, max_keys: int) -> None:
    with pytest.raises(ValueError):
        Aggregator(window=window, max_keys=max_keys)
