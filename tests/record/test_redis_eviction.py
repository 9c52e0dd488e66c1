"""A Redis that may evict keys is refused, at start and at each reconnect (red team 5's lead): against real
redis-servers configured wrongly.

Under ``allkeys-*`` any key may go when Redis is full, under ``volatile-*`` every key with a TTL (the counter
hashes, dedupe marks, quarantine windows): an agent's flood of blocked attempts could push earlier records out.
Only ``noeviction`` is accepted (`egress.record.redis_facade`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from egress.gateway.hostprobe import SystemHost
from egress.record.redis_facade import STORE_ERRORS, EvictingRedis, RedisFacade, eviction_problem
from egress.record.store import RecordStore
from tests.record import record
from tests.redis_server import RedisServer
from tests.waiting import eventually

T0 = 1_700_000_000.0


@pytest.mark.parametrize("policy", ["allkeys-lru", "allkeys-random", "volatile-lru", "volatile-ttl"])
def test_a_server_that_may_evict_is_refused_naming_the_setting(server: RedisServer, policy: str) -> None:
    server.command("CONFIG", "SET", "maxmemory-policy", policy)
    facade = RedisFacade.from_url(server.url)
    try:
        with pytest.raises(EvictingRedis, match=f"maxmemory-policy is '{policy}'.*noeviction"):
            facade.ping()
    finally:
        facade.close()
    complaint = SystemHost().redis(server.url)  # what the pre-flight (`egress gateway run`, doctor) reports
    assert complaint is not None and "maxmemory-policy" in complaint


def test_noeviction_is_accepted(server: RedisServer) -> None:
    assert "noeviction" in server.cli("CONFIG", "GET", "maxmemory-policy")
    facade = RedisFacade.from_url(server.url)
    try:
        assert facade.ping()
    finally:
        facade.close()
    assert SystemHost().redis(server.url) is None


def test_a_reconnect_to_a_server_switched_to_eviction_spools_the_records(server: RedisServer, tmp_path: Path) -> None:
    """Connected while the setting was right; the setting changes and the connection drops: the next connection is
    refused, so the records wait in the spool, and are stored once the setting is right again."""
    store = RecordStore(server.url, tmp_path / "spool", gateway="gw1", retry_interval=0.0)
    try:
        store.write([record(T0)])
        assert store.drain(force=True) >= 0 and store.written == 1
        server.command("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
        server.command("CLIENT", "KILL", "TYPE", "normal")
        store.write([record(T0 + 1)])
        store.drain(force=True)
        assert store.written == 1 and store.spooled >= 1
        server.command("CONFIG", "SET", "maxmemory-policy", "noeviction")

        def stored() -> bool:
            store.drain(force=True)
            assert store.written == 2
            return True

        eventually(stored)
    finally:
        store.close()


def test_a_policy_that_cannot_be_read_is_refused() -> None:
    assert eviction_problem("# Memory\r\nused_memory:1\r\n") is not None
    assert eviction_problem("# Memory\r\nmaxmemory_policy:noeviction\r\n") is None
    assert issubclass(EvictingRedis, STORE_ERRORS)
