"""egress.record.naming: a record's id named when the gateway decides, the same for every repeat aggregated into
that record; and the aggregator following those ids (`Aggregator.add` with ``named``)."""

from __future__ import annotations

import dataclasses

import pytest

from egress.decide import Enforcement, Reason, Verdict
from egress.decisions import DecidedFlow
from egress.detect.base import Category, Finding
from egress.record.aggregate import Aggregator, aggregate_key, fold
from egress.record.naming import BUCKET, decision_id, flow_key, named
from egress.record.schema import AttemptRecord, id_time, new_id

BLOCK = Verdict(Enforcement.BLOCK, Reason.NOT_ALLOWLISTED, "default-deny", "sni x.example to 203.0.113.9:443")
MINING = Finding(Category.MINING, "stratum-v1", "stratum", "login")
FOUND = Verdict(Enforcement.BLOCK, Reason.MINING, "sandboxes.a.detectors.mining", "stratum-v1: login", MINING)
T0 = 1_700_000_000.25


def _flow(ts: float = T0, sport: int = 40000, verdict: Verdict = BLOCK, **changes: object) -> DecidedFlow:
    flow = DecidedFlow(ts, "a", "10.1.0.5", sport, "203.0.113.9", 443, "tcp", "x.example", verdict)
    return dataclasses.replace(flow, **changes)  # type: ignore[arg-type]


def _record(flow: DecidedFlow) -> AttemptRecord:
    return AttemptRecord.of(flow, "gw", flow.record_id or new_id(flow.ts))


@pytest.mark.parametrize("verdict", [BLOCK, FOUND])
@pytest.mark.parametrize("protocol", ["", "gre"])
def test_the_key_is_the_records_aggregation_key(verdict: Verdict, protocol: str) -> None:
    flow = _flow(verdict=verdict, protocol=protocol)
    assert flow_key(flow) == aggregate_key(_record(flow))


def test_repeats_within_a_second_share_the_id_whatever_their_source_port() -> None:
    first = decision_id(_flow(T0))
    assert decision_id(_flow(T0 + 0.5, sport=40001)) == first
    assert decision_id(_flow(T0 + BUCKET)) != first
    assert decision_id(_flow(T0, dst="203.0.113.10")) != first
    assert id_time(first) <= T0 < id_time(first) + BUCKET  # where get_attempt looks for it


def test_only_what_is_recorded_is_named() -> None:
    allowed = _flow(verdict=Verdict(Enforcement.ALLOW, None, "r", "x"))
    assert named(allowed).record_id == ""
    assert named(_flow()).record_id == decision_id(_flow())
    assert named(_flow(record_id="0" * 26)).record_id == "0" * 26


def _add(aggregator: Aggregator, flow: DecidedFlow, now: float) -> list[AttemptRecord]:
    return aggregator.add(_record(named(flow)), now, named=True)


def test_repeats_are_counted_into_the_record_their_id_names() -> None:
    aggregator = Aggregator(window=10, max_keys=100, update_interval=1)
    out = _add(aggregator, _flow(T0), 0.0)
    (first,) = out
    assert first.id == decision_id(_flow(T0))
    for index in range(1, 5):
        out += _add(aggregator, _flow(T0 + index / 10, sport=40000 + index), index / 10)
    out += aggregator.flush(0.5, force=True)
    (record,) = fold(out)
    assert (record.id, record.count) == (first.id, 5)


def test_the_next_second_is_a_record_of_its_own() -> None:
    aggregator = Aggregator(window=10, max_keys=100, update_interval=1)
    out = _add(aggregator, _flow(T0), 0.0) + _add(aggregator, _flow(T0 + BUCKET), 1.0)
    out += aggregator.flush(1.0, force=True)
    assert sorted(record.id for record in fold(out)) == sorted({decision_id(_flow(T0)), decision_id(_flow(T0 + 1))})


@pytest.mark.parametrize("reason", ["window", "max_keys"])
def test_a_late_repeat_of_a_forgotten_record_is_an_update_of_it(reason: str) -> None:
    aggregator = Aggregator(window=10, max_keys=1, update_interval=1)
    out = _add(aggregator, _flow(T0), 0.0)
    if reason == "window":
        out += aggregator.flush(20.0)
        later = 20.0
    else:
        out += _add(aggregator, _flow(T0, dst="198.51.100.1"), 0.1)  # pushes the first key out
        later = 0.2
    out += _add(aggregator, _flow(T0 + 0.5, sport=40009), later)
    out += aggregator.flush(later, force=True)
    records = [record for record in out if not record.update_of and record.dst == "203.0.113.9"]
    assert len(records) == 1, "never a second record with the same id"
    by_id = {record.id: record for record in fold(out)}
    assert by_id[decision_id(_flow(T0))].count == 2
