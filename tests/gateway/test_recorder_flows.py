"""`RecordReporter` as the flow log's sink: ended flows are aggregated by its thread and written at the end of
their minute (or on `flush`), apart from the attempt records; a full queue drops them counted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from egress.flowlog import EndedFlow
from egress.gateway import recorder as recorder_module
from egress.gateway.recorder import RecordReporter
from egress.policy.model import FlowLogSettings
from egress.record.flow_store import read_flows
from tests.redis_server import RedisFactory, RedisServer
from tests.waiting import eventually


@pytest.fixture
def server(redis_factory: RedisFactory) -> Iterator[RedisServer]:
    yield from redis_factory.own()


def _ended(at: float, dst: str = "203.0.113.5", up: int = 10, down: int = 20) -> EndedFlow:
    return EndedFlow("agents", "10.77.0.2", 40000, dst, 443, "tcp", "pypi.org", "r", "allow", up, down, at - 1, at)


def test_flows_of_a_finished_minute_are_written_without_a_flush(server: RedisServer, tmp_path: Path) -> None:
    start = time.time()  # retention counts from the real clock: the flows must be recent
    wall = [start]
    reporter = RecordReporter(server.url, "gw1", str(tmp_path / "spool"), "proxy-0", wall=lambda: wall[0])
    try:
        for _ in range(3):
            reporter.flow_ended(_ended(start))
        wall[0] = start + 200  # that minute is over (and its grace)
        found = eventually(lambda: read_flows(reporter.store.redis, "agents", None, None)[0], timeout=10)
        assert [(r.connections, r.bytes_up, r.bytes_down) for r in found] == [(3, 30, 60)]
        assert reporter.store.read("agents")[0] == []  # no attempt record came of it
    finally:
        reporter.close()
        reporter.store.close()


def test_flush_writes_the_current_minute_and_the_cap_comes_from_the_policy(server: RedisServer, tmp_path: Path) -> None:
    settings = FlowLogSettings(max_destinations=2)
    reporter = RecordReporter(server.url, "gw1", str(tmp_path / "spool"), "proxy-0", flow_log=settings)
    try:
        now = time.time()
        for index in range(5):
            reporter.flow_ended(_ended(now, dst=f"203.0.113.{index}"))
        assert reporter.flush(timeout=30)
        found, _ = read_flows(reporter.store.redis, "agents", None, None)
        assert sorted(r.host for r in found) == ["(other)", "pypi.org", "pypi.org"]
        assert sum(r.connections for r in found) == 5 and reporter.flows.overflow == 3
    finally:
        reporter.close()
        reporter.store.close()


def test_a_full_queue_drops_flows_counted(server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reporter = RecordReporter(server.url, "gw1", str(tmp_path / "spool"), "proxy-0")
    try:
        monkeypatch.setattr(recorder_module, "MAX_QUEUE", 0)
        reporter.flow_ended(_ended(time.time()))
        assert reporter.flows_dropped == 1
    finally:
        monkeypatch.undo()
        reporter.close()
        reporter.store.close()
