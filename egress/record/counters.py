"""The gateway components' counters in Redis (decisions, records written, Redis errors...): each component adds
its deltas to a hash of its own; the API's /metrics reads them all. Keys under the ``{metrics}`` hash tag, so they
live on one node of a Cluster."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from egress.record.redis_facade import RedisFacade

COUNTERS_PREFIX: Final = "egress:{metrics}:"
"""Followed by the component's name (``<gateway>/<component>``): a hash field -> count."""
COUNTERS_INDEX: Final = "egress:{metrics}:index"
"""A set of the counter hashes' keys."""


def add_counters(redis: RedisFacade, component: str, deltas: Mapping[str, int]) -> None:
    """Add ``deltas`` to a component's counters. Raises one of `STORE_ERRORS` when Redis is unreachable; the
    caller keeps the deltas and retries."""
    if not deltas:
        return
    key = f"{COUNTERS_PREFIX}{component}"
    redis.hincrby_each(key, deltas)
    redis.sadd(COUNTERS_INDEX, key)


def read_counters(redis: RedisFacade) -> dict[str, dict[str, int]]:
    """Every component's counters: {component: {field: value}}."""
    return {
        key.removeprefix(COUNTERS_PREFIX): {name: int(value) for name, value in redis.hgetall(key).items()}
        for key in redis.smembers(COUNTERS_INDEX)
    }
