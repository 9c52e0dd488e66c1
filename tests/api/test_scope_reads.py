"""A token scoped to several sandboxes reads its whole scope when it names none (issue 14), against a real
redis-server: the list, the stats and their series, the flow log and the live follow show every sandbox of the
scope and never another's; naming one outside the scope is 403, as before."""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from egress.api.app import create_app
from egress.api.auth import Role, Token, digest
from egress.flowlog import EndedFlow
from egress.record.flow_store import FlowWriter
from egress.record.flows import FlowAggregator
from egress.record.store import RecordStore
from tests.api import ADMIN, TOKENS, auth, seed_attempts, settings
from tests.record import record
from tests.redis_server import RedisServer

TWO = "harness-two-0123456789abcdef"
ONE = "harness-one-0123456789abcdef"
SCOPED_TWO = Token("harness-two", digest(TWO), frozenset({Role.READ}), frozenset({"agents", "builders"}))
SCOPED_ONE = Token("harness-one", digest(ONE), frozenset({Role.READ}), frozenset({"agents"}))
SANDBOXES = ("agents", "builders", "others")


def _flows(now: float) -> list[EndedFlow]:
    return [
        EndedFlow(name, "10.77.0.2", 40000, "203.0.113.5", 443, "tcp", f"{name}.example", "r", "allow", 10, 20,
                  now - 120, now - 119)
        for name in SANDBOXES
    ]  # fmt: skip


@pytest.fixture(scope="module")
def client(redis_server: RedisServer) -> Iterator[TestClient]:
    redis_server.cli("flushall")
    now = time.time()
    others = [record(now - 200 + index, sandbox="others", dst="192.0.2.99", host="x.example") for index in range(3)]
    with tempfile.TemporaryDirectory(prefix="egt-api-scope-reads-") as spool:
        writer = RecordStore(redis_server.url, Path(spool), "gw1", retry_interval=0.0)
        writer.write(seed_attempts(now) + others)
        aggregator = FlowAggregator("gw1", "proxy-0")
        for flow in _flows(now):
            aggregator.add(flow)
        FlowWriter(writer.redis).write(aggregator.take(0, force=True))
        writer.close()
    tokens = (SCOPED_TWO, SCOPED_ONE, *TOKENS)
    with TestClient(create_app(settings(redis_server.url, tokens=tokens))) as test_client:
        yield test_client


@pytest.mark.parametrize(("token", "scope"), [(TWO, {"agents", "builders"}), (ONE, {"agents"}), (ADMIN, None)])
def test_the_list_without_a_sandbox_is_the_whole_scope(client: TestClient, token: str, scope: set[str] | None) -> None:
    response = client.get("/v1/attempts?limit=1000", headers=auth(token))
    assert response.status_code == 200, response.text
    seen = {attempt["sandbox"] for attempt in response.json()["attempts"]}
    assert seen == (scope or set(SANDBOXES))


@pytest.mark.parametrize("path", ["/v1/stats?by=sandbox", "/v1/stats?by=destination", "/v1/stats/series?by=sandbox"])
def test_stats_count_the_scope_only(client: TestClient, path: str) -> None:
    def totals(token: str) -> dict[str, int]:
        body = client.get(path, headers=auth(token)).json()
        buckets = body.get("buckets", [body])
        summed: dict[str, int] = {}
        for bucket in buckets:
            for key, count in bucket["counts"].items():
                summed[key] = summed.get(key, 0) + count
        return summed

    everything, two, one = totals(ADMIN), totals(TWO), totals(ONE)
    if "by=sandbox" in path:
        assert set(everything) == set(SANDBOXES)
        assert two == {name: everything[name] for name in ("agents", "builders")}
        assert one == {"agents": everything["agents"]}
    else:
        assert "x.example" in everything and "x.example" not in two and "live-others.example" not in two
        assert "pastebin.com" in two and "pastebin.com" not in one and "pool.minexmr.com" in one
        assert two["pastebin.com"] == everything["pastebin.com"]


@pytest.mark.parametrize(("token", "scope"), [(TWO, {"agents", "builders"}), (ONE, {"agents"}), (ADMIN, None)])
def test_retention_tells_the_scope_only(client: TestClient, token: str, scope: set[str] | None) -> None:
    response = client.get("/v1/retention", headers=auth(token))
    assert response.status_code == 200, response.text
    held = response.json()["sandboxes"]
    assert set(held) == (scope or set(SANDBOXES))
    assert all(row["records"] > 0 and row["trimmed_by_size"] == row["trimmed_by_age"] == 0 for row in held.values())
    assert client.get("/v1/retention?window=60", headers=auth(token)).status_code == 400  # it takes no query


@pytest.mark.parametrize(("token", "scope"), [(TWO, {"agents", "builders"}), (ONE, {"agents"}), (ADMIN, None)])
def test_flows_without_a_sandbox_are_the_whole_scope(client: TestClient, token: str, scope: set[str] | None) -> None:
    response = client.get("/v1/flows?since=0", headers=auth(token))
    assert response.status_code == 200, response.text
    found = response.json()["flows"]
    assert {flow["sandbox"] for flow in found} == (scope or set(SANDBOXES))
    assert all(flow["host"] == f"{flow['sandbox']}.example" for flow in found)
    assert client.get("/v1/flows?sandbox=others", headers=auth(token)).status_code == (200 if scope is None else 403)


def test_the_follow_without_a_sandbox_streams_the_scope_only(client: TestClient, redis_server: RedisServer) -> None:
    done = threading.Event()

    def keep_writing() -> None:  # until the stream saw some: it reads only what arrives after it opened
        with tempfile.TemporaryDirectory(prefix="egt-api-follow-") as spool:
            writer = RecordStore(redis_server.url, Path(spool), "gw1", retry_interval=0.0)
            while not done.wait(0.2):
                now = time.time()
                writer.write([record(now + 0.001 * index, sandbox=name, dst="192.0.2.1", host=f"live-{name}.example")
                              for index, name in enumerate(("others", "builders", "others", "agents"))])  # fmt: skip
            writer.close()

    seen: list[str] = []
    writer_thread = threading.Thread(target=keep_writing)
    try:
        with client.stream("GET", "/v1/follow", headers=auth(TWO)) as stream:
            writer_thread.start()
            deadline = time.monotonic() + 120  # heartbeats keep lines coming: a stream that shows nothing ends here
            for line in stream.iter_lines():
                if time.monotonic() > deadline:
                    break
                if line.startswith("data:") and '"sandbox"' in line:
                    seen.append(json.loads(line.removeprefix("data:"))["host"])
                    if len(seen) == 6:
                        break
    finally:
        done.set()
        writer_thread.join()
    assert len(seen) == 6 and set(seen) == {"live-agents.example", "live-builders.example"}, seen
