"""The suite's shared test machinery; the helpers themselves live in importable modules beside it.

- Waiting: `eventually` and `scaled` (tests/waiting.py), with timeouts stretched by ``EGRESS_TEST_TIME_FACTOR``.
- Redis: `redis_factory` gives each test module that asks for it a factory of redis-servers of its own
  (tests/redis_server.py), stopped at the end of the module; `redis_server` is one such server for the module.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.needs import redis_missing, unavailable
from tests.redis_server import RedisFactory, RedisServer
from tests.waiting import eventually, scaled

__all__ = ["eventually", "scaled"]


@pytest.fixture(scope="module")
def redis_factory() -> Iterator[RedisFactory]:
    """Starts redis-servers (unix sockets) and Clusters (loopback ports verified to be theirs) for this module."""
    if reason := redis_missing():
        unavailable(reason)
    factory = RedisFactory()
    try:
        yield factory
    finally:
        factory.cleanup()


@pytest.fixture(scope="module")
def redis_server(redis_factory: RedisFactory) -> RedisServer:
    """One redis-server for this module (tests that need an empty one flush it)."""
    return redis_factory.server()
