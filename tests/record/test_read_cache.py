"""The cache of decoded entries (egress/record/read_cache.py): bounded by records, least recently used out; and
`walk.fetch_entries` reads a cached entry without Redis."""

from __future__ import annotations

import tempfile
from pathlib import Path

from egress.record import walk
from egress.record.layout import index_key
from egress.record.read_cache import EntryCache
from egress.record.store import RecordStore
from tests.record import record
from tests.redis_server import RedisFactory


def test_bounded_by_records_least_recently_used_out() -> None:
    cache = EntryCache(max_records=5)
    a, b, c = [record()] * 2, [record()] * 2, [record()] * 2
    cache.put(("u", "s", "1"), a)
    cache.put(("u", "s", "2"), b)
    assert cache.get(("u", "s", "1")) is a  # now the most recent
    cache.put(("u", "s", "3"), c)  # 6 records: the least recently used (2) goes
    assert cache.get(("u", "s", "2")) is None and cache.get(("u", "s", "1")) is a and len(cache) == 2
    cache.put(("u", "s", "4"), [record()] * 6)  # larger than the whole cache: not kept
    assert cache.get(("u", "s", "4")) is None


def test_a_cached_entry_is_read_without_redis(redis_factory: RedisFactory) -> None:
    server = redis_factory.server()
    with tempfile.TemporaryDirectory(prefix="egt-read-cache-") as spool:
        store = RecordStore(server.url, Path(spool), "gw1", retry_interval=0.0)
        written = [record(1_700_000_000.0 + index, sandbox="cached", sport=index) for index in range(5)]
        store.write(written)
        assert list(walk.records_by_time(store.redis, "cached", 0, 2e9)) == written
        (entry_id,) = store.redis.zrange_by_score(index_key("cached"), "-inf", "+inf", 0, 10)
        redis_factory.discard(server)
        assert walk.fetch_entries(store.redis, "cached", [entry_id]) == [written]
        store.close()
