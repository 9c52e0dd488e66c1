"""Fixtures of the record store's tests: a redis-server of the test's own, and a plain client to look at it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.redis_server import RedisFactory, RedisServer
from tests.waiting import scaled


@pytest.fixture
def server(redis_factory: RedisFactory) -> Iterator[RedisServer]:
    """A fresh server for each test: several kill, pause or restart it."""
    yield from redis_factory.own()


@pytest.fixture
def raw(server: RedisServer) -> Iterator[redis.Redis]:
    """A client of ``server`` that decodes replies, for looking at the keys as they are."""
    client = redis.Redis.from_url(server.url, decode_responses=True, socket_timeout=scaled(10))
    yield client
    client.close()
