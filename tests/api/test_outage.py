"""The API while Redis is away, through a real uvicorn and a real redis-server killed mid-test: every request gets
an HTTP reply (503, JSON), keep-alive connections survive, the log says it once, and answers come back with Redis.
The outage log's rate limit is unit-tested on an injected clock."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from egress.api.app import create_app
from egress.api.errors import OutageLog
from egress.record.store import RecordStore
from tests.api import READ, ApiServer, auth, seed_attempts, settings
from tests.redis_server import RedisFactory, RedisServer
from tests.waiting import eventually, scaled

ROUTES = (
    "/v1/attempts",
    "/v1/attempts?sandbox=agents&limit=5",
    "/v1/sandboxes",
    "/v1/sandboxes/agents/timeline",
    "/v1/stats",
    "/v1/stats/series",
    "/v1/attempts/01ARZ3NDEKTSV4RRFFQ69G5FAV",
)


class Collected(logging.Handler):
    """Every log record of the loggers it is attached to (uvicorn's do not propagate to the root)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collected() -> Iterator[Collected]:
    handler = Collected()
    loggers = [logging.getLogger(), logging.getLogger("uvicorn"), logging.getLogger("uvicorn.error")]
    for logger in loggers:
        logger.addHandler(handler)
    yield handler
    for logger in loggers:
        logger.removeHandler(handler)


@pytest.fixture
def server(redis_factory: RedisFactory) -> Iterator[RedisServer]:
    yield from redis_factory.own()


def test_redis_killed_every_request_gets_503_on_the_same_connection(server: RedisServer, collected: Collected) -> None:
    with tempfile.TemporaryDirectory(prefix="egt-api-outage-") as spool:
        writer = RecordStore(server.url, Path(spool), "gw1", retry_interval=0.0)
        writer.write(seed_attempts(time.time()))
        writer.close()
    api = ApiServer(create_app(settings(server.url))).start()
    connects: list[str] = []

    def trace(event: str, _info: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.complete":
            connects.append(event)

    try:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        with httpx.Client(base_url=api.url, timeout=scaled(10), limits=limits, headers=auth(READ)) as http:

            def get(path: str) -> httpx.Response:
                return http.get(path, extensions={"trace": trace})

            assert get("/v1/attempts").status_code == 200
            server.kill()
            replies = [get(ROUTES[index % len(ROUTES)]) for index in range(60)]
            assert [reply.status_code for reply in replies] == [503] * len(replies)
            for reply in replies:
                body = reply.json()
                assert set(body) == {"error"} and "Redis is unreachable" in body["error"]["message"], body
            assert len(connects) == 1, f"{len(connects)} connections: the server closed keep-alive ones"
            health = get("/v1/health")
            assert health.status_code == 503 and health.json()["redis"] is False
            server.start()

            def answers_again() -> bool:
                assert get("/v1/attempts").status_code == 200
                return True

            eventually(answers_again, timeout=15, interval=0.1)
            assert all(get(path).status_code in {200, 404} for path in ROUTES)
            assert len(connects) == 1
    finally:
        api.stop()
    with_traceback = [record for record in collected.records if record.exc_info is not None]
    assert not with_traceback, with_traceback[0].getMessage()
    outage_lines = [record for record in collected.records if record.name == "egress.api.errors"]
    assert 1 <= len(outage_lines) <= 2, [record.getMessage() for record in outage_lines]  # the outage, its end


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_outage_log_says_it_once_then_once_a_minute_then_the_end(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    outage = OutageLog(clock=clock, every=60.0)
    caplog.set_level(logging.INFO, logger="egress.api.errors")
    error = ConnectionError("Connection refused")
    for _ in range(500):
        outage.failed(error)
        clock.now += 0.05  # 25 s of failures
    assert len(caplog.records) == 1 and "unreachable" in caplog.records[0].getMessage()
    for _ in range(800):
        outage.failed(error)
        clock.now += 0.05  # 40 s more: past the minute
    assert len(caplog.records) == 2 and "still unreachable" in caplog.records[1].getMessage()
    outage.answered()
    outage.answered()
    assert len(caplog.records) == 3 and "answers again" in caplog.records[2].getMessage()
    assert "1300 requests" in caplog.records[2].getMessage()
    outage.failed(error)
    assert len(caplog.records) == 4 and "unreachable" in caplog.records[3].getMessage()
