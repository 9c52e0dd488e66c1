"""Ids named at decision time, end to end through the recorder (the gateway's writer) into a real redis-server:
the record is stored under the id the decision was given, every repeat of that second is counted into it, and
`get_attempt` (what ``GET /v1/attempts/{id}`` calls) finds it by that id."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from egress.decide import Enforcement, Reason, Verdict
from egress.decisions import DecidedFlow
from egress.gateway import recorder as recorder_module
from egress.gateway.recorder import RecordReporter
from egress.record.naming import named
from egress.record.query import get_attempt
from tests.redis_server import RedisFactory, RedisServer
from tests.waiting import eventually

BLOCK = Verdict(Enforcement.BLOCK, Reason.NOT_ALLOWLISTED, "default-deny", "host blocked.lab to 198.18.10.2:80")


@pytest.fixture
def now() -> list[float]:
    """The recorder's monotonic clock, moved by the test (its update interval passes when the test says)."""
    return [1000.0]


@pytest.fixture
def reporter(redis_factory: RedisFactory, tmp_path: Path, now: list[float]) -> Iterator[RecordReporter]:
    server: RedisServer = redis_factory.server()
    instance = RecordReporter(server.url, "gw1", str(tmp_path / "spool"), "proxy-0", clock=lambda: now[0])
    yield instance
    instance.close()
    instance.store.close()
    redis_factory.discard(server)


def test_the_decisions_id_fetches_its_record_with_every_repeat(reporter: RecordReporter, now: list[float]) -> None:
    second = float(int(time.time()))
    ids = []
    for index in range(5):  # five attempts within one second, each from a new source port
        flow = named(DecidedFlow(second + index / 10, "agents", "10.1.0.5", 40000 + index, "198.18.10.2", 80, "tcp",
                                 "blocked.lab", BLOCK))  # fmt: skip
        reporter.report(flow)
        ids.append(flow.record_id)
    assert len(set(ids)) == 1 and ids[0]
    record = eventually(lambda: get_attempt(reporter.store, ids[0]), timeout=10)
    assert record is not None and record.id == ids[0] and record.first_ts == second
    now[0] += recorder_module.UPDATE_SECONDS  # the repeats go as an update once the interval has passed
    eventually(lambda: getattr(get_attempt(reporter.store, ids[0]), "count", 0) == 5, timeout=10)
    records, _ = reporter.store.read("agents", count=100)
    assert [r.id for r in records] == ids[:1]


def test_a_repeat_after_a_flush_still_counts_into_the_named_record(reporter: RecordReporter) -> None:
    second = float(int(time.time()))
    flow = named(DecidedFlow(second, "agents", "10.1.0.5", 40000, "198.18.10.2", 80, "tcp", "blocked.lab", BLOCK))
    reporter.report(flow)
    assert reporter.flush(timeout=30)
    again = named(DecidedFlow(second + 0.5, "agents", "10.1.0.5", 40001, "198.18.10.2", 80, "tcp", "blocked.lab",
                              BLOCK))  # fmt: skip
    assert again.record_id == flow.record_id
    reporter.report(again)
    assert reporter.flush(timeout=30)
    record = get_attempt(reporter.store, flow.record_id)
    assert record is not None and record.count == 2
