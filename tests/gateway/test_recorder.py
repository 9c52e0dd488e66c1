"""`egress.gateway.recorder.RecordReporter` against a real redis-server: what a process holds is written at once
(a first attempt) or within a second (its repeats), `flush` and `close` write everything held, and the queue to
its thread is bounded."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from egress.decide import Enforcement, Reason, Verdict
from egress.decisions import DecidedFlow
from egress.gateway import recorder as recorder_module
from egress.gateway.recorder import RecordReporter
from egress.record.schema import AttemptRecord
from tests.redis_server import RedisFactory, RedisServer
from tests.waiting import eventually

BLOCK = Verdict(Enforcement.BLOCK, Reason.MINING, "sandboxes.agents.detectors.mining", '{"method":"login"}')
T0 = 1_700_000_000.0


@pytest.fixture
def server(redis_factory: RedisFactory) -> Iterator[RedisServer]:
    yield from redis_factory.own()


@pytest.fixture
def reporter(server: RedisServer, tmp_path: Path) -> Iterator[RecordReporter]:
    instance = RecordReporter(server.url, "gw1", str(tmp_path / "spool"), "proxy-0")
    yield instance
    instance.close()
    instance.store.close()


def _flow(dst: str, ts: float = T0) -> DecidedFlow:
    return DecidedFlow(ts, "agents", "10.77.0.2", 40000, dst, 3333, "tcp", "", BLOCK)


def _by_dst(reporter: RecordReporter) -> dict[str, AttemptRecord]:
    records, _ = reporter.store.read("agents", count=1000)
    assert len({record.dst for record in records}) == len(records), "one record per attempt"
    return {record.dst: record for record in records}


def test_a_first_attempt_and_its_repeats_reach_redis_without_a_flush(server: RedisServer, tmp_path: Path) -> None:
    now = [1000.0]  # the recorder's monotonic clock: its update interval passes when the test says, not in 1 s
    reporter = RecordReporter(server.url, "gw1", str(tmp_path / "spool"), "proxy-0", clock=lambda: now[0])
    try:
        for index in range(30):
            reporter.report(_flow("203.0.113.9", T0 + index / 100))
        # Never flushed nor closed, as a process killed now: the record comes at the next tick, its repeats once
        # the update interval has passed.
        record = eventually(lambda: _by_dst(reporter).get("203.0.113.9"), timeout=5)
        assert record is not None and record.first_ts == T0
        now[0] += recorder_module.UPDATE_SECONDS
        eventually(lambda: _by_dst(reporter)["203.0.113.9"].count == 30, timeout=5)
    finally:
        reporter.close()
        reporter.store.close()


def test_close_writes_every_repeat_it_holds(server: RedisServer, tmp_path: Path) -> None:
    reporter = RecordReporter(server.url, "gw1", str(tmp_path / "spool"), "proxy-0")
    destinations = [f"198.51.100.{index}" for index in range(1, 41)]
    for repeat in range(5):
        for dst in destinations:
            reporter.report(_flow(dst, T0 + repeat))
    reporter.close()
    counts = {dst: record.count for dst, record in _by_dst(reporter).items()}
    assert counts == dict.fromkeys(destinations, 5)
    reporter.store.close()


def test_flush_writes_what_is_held_and_the_reporter_goes_on(reporter: RecordReporter) -> None:
    for repeat in range(3):
        reporter.report(_flow("192.0.2.7", T0 + repeat))
    assert reporter.flush()
    assert _by_dst(reporter)["192.0.2.7"].count == 3
    reporter.report(_flow("192.0.2.7", T0 + 5))
    assert reporter.flush()
    assert _by_dst(reporter)["192.0.2.7"].count == 4


def test_a_full_queue_drops_counts_and_logs_once(
    reporter: RecordReporter, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(recorder_module, "MAX_QUEUE", 0)
    with caplog.at_level(logging.ERROR, logger="egress.recorder"):
        for index in range(100):
            reporter.report(_flow("192.0.2.8", T0 + index))
    assert reporter.dropped == 100
    assert len([entry for entry in caplog.records if "queue full" in entry.getMessage()]) == 1
    assert reporter.counters.take() == {"decisions|proxy|block|mining": 100}  # decisions are still counted


def test_a_thread_that_died_is_started_again_and_writes_what_was_held(reporter: RecordReporter) -> None:
    for repeat in range(3):
        reporter.report(_flow("192.0.2.40", T0 + repeat))
    reporter.die()  # as a bug in the thread would: it raises at its next turn
    eventually(lambda: not reporter.alive, timeout=10)
    assert not reporter.flush(), "a dead thread writes nothing"
    for repeat in range(3, 5):
        reporter.report(_flow("192.0.2.40", T0 + repeat))
        reporter.report(_flow("192.0.2.41", T0 + repeat))
    assert reporter.restart() and reporter.alive
    assert not reporter.restart(), "never a second thread beside a living one (one spool writer)"
    assert reporter.flush()
    counts = {dst: record.count for dst, record in _by_dst(reporter).items()}
    assert counts == {"192.0.2.40": 5, "192.0.2.41": 2}


def test_close_after_the_thread_died_writes_everything(server: RedisServer, tmp_path: Path) -> None:
    reporter = RecordReporter(server.url, "gw1", str(tmp_path / "spool"), "gateway")
    reporter.die()
    eventually(lambda: not reporter.alive, timeout=10)
    for repeat in range(4):
        reporter.report(_flow("192.0.2.50", T0 + repeat))
    reporter.close()
    assert {dst: record.count for dst, record in _by_dst(reporter).items()} == {"192.0.2.50": 4}
    reporter.store.close()
