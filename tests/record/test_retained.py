"""What the store holds of each sandbox and what its retention dropped (`egress.record.retained`), against a real
redis-server: the counts the write script keeps when it trims, by size (each kind) and by age."""

from __future__ import annotations

from pathlib import Path

import redis

from egress.record.retained import Retained, retained
from tests.record import record
from tests.record.test_store import _arrived_long_ago, _batch, _read_all, _refused, _store
from tests.redis_server import RedisServer


def test_a_sandbox_with_no_records_holds_and_dropped_nothing(server: RedisServer, tmp_path: Path) -> None:
    store = _store(server.url, tmp_path)
    assert retained(store, ["nobody"]) == {"nobody": Retained(0, 0, 0, 0, 0, 0)}


def test_the_size_trim_counts_what_it_dropped_of_each_kind(server: RedisServer, tmp_path: Path) -> None:
    """Red team 14's flood: the findings stay, and the refusals the flood pushed out are counted, not unknown."""
    store = _store(server.url, tmp_path, retention_max_len=20)
    store.write(_batch(0, 1))
    for start in range(1, 301, 10):
        store.write(_refused(start, 10))
    for start in range(400, 460, 10):  # findings past their own budget of 20: 60 written
        store.write(_batch(start, 10))
    now = retained(store, ["agents", "others"])
    assert now["others"] == Retained(0, 0, 0, 0, 0, 0)
    held = _read_all(store)
    assert now["agents"] == Retained(
        records=len(held),
        findings=sum(item.category == "mining" for item in held),
        trimmed_by_size=301 + 60 - len(held),
        trimmed_findings_by_size=61 - sum(item.category == "mining" for item in held),
        trimmed_by_age=0,
        trimmed_findings_by_age=0,
    )
    assert now["agents"].trimmed_findings_by_size > 0 and now["agents"].trimmed_by_size > 280


def test_the_age_trim_counts_what_it_dropped(server: RedisServer, raw: redis.Redis, tmp_path: Path) -> None:
    store = _store(server.url, tmp_path, retention_max_age_days=1)
    stale = [record(ts=1_700_000_000.0 + index) for index in range(3)]
    _arrived_long_ago(raw, stale, days=2)  # a policy-kind entry as far as the script knows (no ``f`` field)
    store.write([record(ts=1_700_000_100.0)])
    assert retained(store, ["agents"])["agents"] == Retained(1, 1, 0, 0, 3, 0)
