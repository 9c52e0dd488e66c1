"""The fleet's policy history (egress.record.policy_store) on a real redis-server and on a real Redis Cluster."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from egress.record.policy_store import GatewayReport, PolicyHistory, StoredVersion
from tests.redis_server import RedisFactory, RedisServer


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def history(redis_server: RedisServer) -> Iterator[PolicyHistory]:
    redis_server.flush()
    made = PolicyHistory.from_url(redis_server.url)
    made._clock = Clock()
    yield made
    made.close()


def test_an_empty_store_has_nothing_applied(history: PolicyHistory) -> None:
    assert history.applied() is None
    assert history.history() == [] and history.gateways() == []
    assert history.text(1) is None and history.version(1) is None


def test_each_apply_is_a_new_numbered_version_with_its_text(history: PolicyHistory) -> None:
    first = history.record("version: 1\n# one\n", _digest("version: 1\n# one\n"), "alice", "a.yaml")
    second = history.record("version: 1\n# two\n", _digest("version: 1\n# two\n"), "bob", "api")
    assert (first.version, second.version) == (1, 2)
    assert history.applied() == StoredVersion(2, second.digest, second.time, "bob", "api")
    assert history.text(1) == "version: 1\n# one\n" and history.text(2) == "version: 1\n# two\n"
    assert history.history() == [second, first]  # newest first
    assert history.version(1) == first


def test_a_rollback_is_a_new_version_that_names_the_old_one(history: PolicyHistory) -> None:
    history.record("a", _digest("a"), "alice", "a.yaml")
    history.record("b", _digest("b"), "alice", "b.yaml")
    back = history.record("a", _digest("a"), "carol", "rollback", rollback_of=1)
    assert back.version == 3 and back.rollback_of == 1
    assert history.applied() == back  # with the version it rolls back to
    assert history.version(3) == back


def test_the_oldest_versions_beyond_the_cap_are_dropped(redis_server: RedisServer) -> None:
    redis_server.flush()
    history = PolicyHistory.from_url(redis_server.url)
    history.keep = 3
    for index in range(5):
        history.record(f"t{index}", _digest(f"t{index}"), "a", "f")
    assert [stored.version for stored in history.history()] == [5, 4, 3]
    assert history.text(2) is None and history.text(3) == "t2"
    history.close()


def test_a_large_text_is_kept_whole(history: PolicyHistory) -> None:
    text = "version: 1\n" + "".join(f"# host{index}.example\n" for index in range(200_000))
    history.record(text, _digest(text), "a", "big.yaml")
    assert history.text(1) == text


def test_gateways_report_what_they_run(history: PolicyHistory) -> None:
    one = GatewayReport("gw-1", "applied", "d1", 3, 10.0, wanted=3)
    two = GatewayReport("gw-2", "failed", "d0", 2, 11.0, wanted=3, error="nftables: syntax error")
    history.report(one)
    history.report(two)
    history.report(GatewayReport("gw-1", "local", "dx", None, 12.0))
    assert history.gateways() == [GatewayReport("gw-1", "local", "dx", None, 12.0), two]


def test_every_operation_works_on_a_cluster(redis_factory: RedisFactory) -> None:
    """Each script's keys share one hash tag, so the Cluster runs them on one node."""
    nodes = redis_factory.cluster()
    history = PolicyHistory.from_url(f"redis+cluster://127.0.0.1:{nodes[0].port}")
    try:
        first = history.record("a", _digest("a"), "alice", "a.yaml")
        second = history.record("b", _digest("b"), "alice", "b.yaml", rollback_of=None)
        history.report(GatewayReport("gw-1", "applied", _digest("b"), 2, 1.0, wanted=2))
        assert history.applied() == StoredVersion(2, second.digest, second.time, "alice", "b.yaml")
        assert history.history() == [second, first]
        assert history.text(1) == "a"
        assert [report.gateway for report in history.gateways()] == ["gw-1"]
    finally:
        history.close()
        redis_factory.discard(*nodes)
