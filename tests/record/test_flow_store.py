"""`egress.record.flow_store` against a real redis-server: aggregates written and read back, a replay adds nothing,
retention by age and by count, and an outage either loses nothing (held, then delivered) or counts exactly what
it dropped."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from egress.flowlog import EndedFlow
from egress.record import flow_store, flows
from egress.record.flow_store import FlowWriter, flow_sandboxes, flows_key, read_flows
from egress.record.flows import FlowAggregator, FlowRecord
from egress.record.redis_facade import RedisFacade
from tests.redis_server import RedisServer

T0 = 1_700_000_040.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def facade(server: RedisServer) -> Iterator[RedisFacade]:
    instance = RedisFacade.from_url(server.url)
    yield instance
    instance.close()


def _records(count: int, minute: int = 0, sandbox: str = "agents", connections: int = 1) -> list[FlowRecord]:
    agg = FlowAggregator("gw1", "proxy-0", max_destinations=100_000)
    for index in range(count):
        at = T0 + 60 * minute + 1
        for _ in range(connections):
            agg.add(EndedFlow(sandbox, "10.77.0.2", 40000, f"203.0.{index // 250}.{index % 250}", 443, "tcp",
                              "pypi.org", "r", "allow", 10, 20, at - 1, at))  # fmt: skip
    return agg.take(0, force=True)


def test_written_aggregates_read_back_and_a_replay_adds_nothing(facade: RedisFacade) -> None:
    writer = FlowWriter(facade, clock=Clock(T0 + 120))
    batch = _records(300) + _records(2, sandbox="builds")
    writer.write(batch)
    writer.write(batch)  # the reply was lost, the batch sent again
    found, more = read_flows(facade, "agents", T0, T0 + 60)
    assert not more and sorted(found, key=lambda r: r.dst) == sorted(batch[:300], key=lambda r: r.dst)
    assert flow_sandboxes(facade) == ["agents", "builds"]
    assert writer.written == 604 and writer.pending == 0
    assert read_flows(facade, "agents", T0 + 200, None) == ([], False)  # a later range: nothing
    cut, more = read_flows(facade, "agents", None, None, limit=10)
    assert len(cut) == 10 and more


def test_retention_by_age_then_by_count_drops_the_oldest_windows(facade: RedisFacade) -> None:
    clock = Clock(T0 + 120)
    writer = FlowWriter(facade, max_records=5, max_age_s=3600, clock=clock)
    writer.write(_records(2, minute=0))
    clock.now = T0 + 3600 + 61  # minute 0 is older than an hour now
    writer.write(_records(2, minute=60))
    found, _ = read_flows(facade, "agents", None, None)
    assert {record.window_start for record in found} == {T0 + 3600}
    writer.write(_records(4, minute=61))  # 6 > 5: the oldest goes
    found, _ = read_flows(facade, "agents", None, None)
    assert len(found) == 5 and sum(record.window_start == T0 + 3600 for record in found) == 1


def test_an_outage_holds_aggregates_and_delivers_them_once_redis_answers(server: RedisServer) -> None:
    facade = RedisFacade.from_url(server.url)
    monotonic = Clock(0.0)
    writer = FlowWriter(facade, clock=Clock(T0 + 120), monotonic=monotonic)
    server.kill()
    batch = _records(20)
    writer.write(batch[:10])
    monotonic.now += 5
    writer.write(batch[10:])
    assert writer.pending == 20 and writer.redis_errors == 2 and writer.lost == 0
    server.start()
    monotonic.now += 5
    writer.write([])
    assert writer.pending == 0 and writer.lost == 0
    found, _ = read_flows(facade, "agents", None, None)
    assert sorted(found, key=lambda r: r.dst) == sorted(batch, key=lambda r: r.dst)
    facade.close()


def test_past_the_pending_cap_the_oldest_are_dropped_and_counted_exactly(server: RedisServer) -> None:
    facade = RedisFacade.from_url(server.url)
    monotonic = Clock(0.0)
    writer = FlowWriter(facade, max_pending=8, clock=Clock(T0 + 120), monotonic=monotonic)
    server.kill()
    batch = _records(12, connections=3)
    writer.write(batch)
    assert (writer.pending, writer.lost, writer.lost_connections) == (8, 4, 12)
    server.start()
    monotonic.now += 5
    writer.write([])
    found, _ = read_flows(facade, "agents", None, None)
    assert sorted(r.dst for r in found) == sorted(r.dst for r in batch[4:])  # the newest 8 kept
    assert sum(r.connections for r in found) + writer.lost_connections == 36  # every connection kept or counted
    facade.close()


def test_keys_are_hash_tagged_per_sandbox() -> None:
    assert flows_key("agents") == "egress:{agents}:flows"
    assert flow_store.WINDOW_S == 60.0 and flows.GRACE < flow_store.WINDOW_S


def test_a_surrogate_name_is_stored_and_read_back(facade: RedisFacade) -> None:
    agg = FlowAggregator("gw1", "proxy-0")
    agg.add(EndedFlow("agents", "10.77.0.2", 1, "203.0.113.1", 80, "tcp", "x\udcff.example", "r", "allow", 1, 2,
                      T0, T0 + 1))  # fmt: skip
    writer = FlowWriter(facade, clock=Clock(T0 + 120))
    writer.write(agg.take(0, force=True))
    found, _ = read_flows(facade, "agents", None, None)
    assert [record.host for record in found] == ["x\udcff.example"] and writer.lost == 0
