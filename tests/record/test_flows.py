"""`egress.record.flows`: ended connections → aggregates per sandbox, key and minute, bounded by the cap; merged
and summed by destination on the read side. Pure."""

from __future__ import annotations

import pytest

from egress.flowlog import EndedFlow
from egress.record import flows
from egress.record.community_id import community_id
from egress.record.flows import OTHER, FlowAggregator, FlowFilter, FlowRecord

T0 = 1_700_000_040.0  # a minute starts at 1_700_000_040


def _ended(dst: str = "203.0.113.5", host: str = "pypi.org", up: int = 100, down: int = 2000, at: float = T0 + 1,
           sandbox: str = "agents", sport: int = 40000, action: str = "allow") -> EndedFlow:  # fmt: skip
    return EndedFlow(sandbox, "10.77.0.2", sport, dst, 443, "tcp", host, "sandboxes.agents.allow.hosts[0]", action,
                     up, down, at - 0.5, at)  # fmt: skip


def test_connections_to_one_destination_in_a_minute_are_one_aggregate_with_sums() -> None:
    agg = FlowAggregator("gw1", "proxy-0")
    agg.add(_ended(up=100, down=2000, sport=40000))
    agg.add(_ended(up=50, down=10, at=T0 + 30, sport=40001))
    assert agg.take(T0 + 30) == []  # the minute is not over
    [record] = agg.take(T0 + 60 + flows.GRACE)
    assert (record.connections, record.bytes_up, record.bytes_down) == (2, 150, 2010)
    assert (record.window_start, record.window_s) == (T0, 60.0)
    assert (record.first_ts, record.last_ts) == (T0 + 0.5, T0 + 30)
    assert record.duration_s == 1.0 and record.duration_max_s == 0.5
    assert record.community_id == community_id("10.77.0.2", "203.0.113.5", 6, 40000, 443)
    assert agg.take(T0 + 1000) == [] and agg.held == 0


@pytest.mark.parametrize(
    "other",
    [
        _ended(dst="203.0.113.6"),
        _ended(host="files.pythonhosted.org"),
        _ended(sandbox="builds"),
        _ended(action="record"),
        _ended(at=T0 + 61),  # the next minute
    ],
)
def test_a_different_key_or_minute_is_another_aggregate(other: EndedFlow) -> None:
    agg = FlowAggregator("gw1", "proxy-0")
    agg.add(_ended())
    agg.add(other)
    assert len(agg.take(0, force=True)) == 2


def test_past_the_cap_connections_fold_into_one_other_aggregate_and_are_counted() -> None:
    agg = FlowAggregator("gw1", "proxy-0", max_destinations=3)
    for index in range(10):
        agg.add(_ended(dst=f"203.0.113.{index}", up=1, down=2))
    agg.add(_ended(dst="203.0.113.0", up=1, down=2))  # a key already held still adds to its own aggregate
    records = agg.take(0, force=True)
    assert len(records) == 4 and agg.overflow == 7
    other = next(record for record in records if record.host == OTHER)
    assert (other.connections, other.bytes_up, other.bytes_down) == (7, 7, 14)
    assert sum(record.connections for record in records) == 11


def test_merge_sums_what_several_processes_wrote_for_one_key_and_minute() -> None:
    one, two = FlowAggregator("gw1", "proxy-0"), FlowAggregator("gw1", "proxy-1")
    one.add(_ended(up=1, down=2, at=T0 + 5))
    two.add(_ended(up=10, down=20, at=T0 + 2))
    two.add(_ended(dst="198.51.100.1", at=T0 + 3))
    merged = flows.merge(one.take(0, force=True) + two.take(0, force=True))
    assert len(merged) == 2
    pypi = next(record for record in merged if record.dst == "203.0.113.5")
    assert (pypi.connections, pypi.bytes_up, pypi.bytes_down, pypi.component) == (2, 11, 22, "")
    assert pypi.first_ts == T0 + 1.5 and pypi.last_ts == T0 + 5


def test_by_destination_spans_minutes_most_bytes_first() -> None:
    agg = FlowAggregator("gw1", "proxy-0")
    for minute in range(3):
        agg.add(_ended(at=T0 + 60 * minute + 1, up=5, down=5))
    agg.add(_ended(dst="198.51.100.1", host="big.example", up=10_000, down=0))
    summed = flows.by_destination(agg.take(0, force=True))
    assert [record.host for record in summed] == ["big.example", "pypi.org"]
    pypi = summed[1]
    assert (pypi.connections, pypi.bytes_up, pypi.window_start, pypi.window_s) == (3, 15, T0, 180.0)


def test_json_round_trip_and_malformed_members() -> None:
    agg = FlowAggregator("gw1", "proxy-0")
    agg.add(_ended())
    [record] = agg.take(0, force=True)
    assert flows.decode(flows.encode(record)) == record
    assert list(flows.to_json(record))[:3] == ["sandbox", "gateway", "component"]
    with pytest.raises(ValueError, match="malformed flow record"):
        flows.decode(b'{"sandbox": 1}')


def test_filter_by_host_below_a_name_address_port_and_decision() -> None:
    agg = FlowAggregator("gw1", "proxy-0")
    agg.add(_ended(host="files.pythonhosted.org"))
    agg.add(_ended(host="pythonhosted.org.evil.example", dst="198.51.100.7"))
    agg.add(_ended(host="", dst="198.51.100.8", action="record"))
    records: list[FlowRecord] = agg.take(0, force=True)
    assert [r.host for r in records if FlowFilter(host="pythonhosted.org").matches(r)] == ["files.pythonhosted.org"]
    assert [r.dst for r in records if FlowFilter(dst="198.51.100.8").matches(r)] == ["198.51.100.8"]
    assert [r.decision for r in records if FlowFilter(decision="record").matches(r)] == ["record"]
    assert len([r for r in records if FlowFilter(dport=443).matches(r)]) == 3
    assert flows.within(records, T0 + 2, None) == [] and len(flows.within(records, T0, T0 + 1)) == 3


def test_a_name_that_was_not_utf8_round_trips() -> None:
    agg = FlowAggregator("gw1", "proxy-0")
    agg.add(_ended(host="bad\udcffname.example"))
    [record] = agg.take(0, force=True)
    assert flows.decode(flows.encode(record)) == record
