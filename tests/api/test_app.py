"""The query API against a real redis-server and the real query layer: auth, every endpoint, every error shape;
live follow and one end-to-end run through a real uvicorn server (`egress api serve`, two workers)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from egress.api import server
from egress.api.app import MAX_BODY, create_app
from egress.api.models import parse_time
from egress.api.settings import Settings, parse_listen
from egress.record import query
from egress.record.store import RecordStore
from tests.api import ADMIN, READ, REPORT, TOKENS, ApiServer, auth, seed_actions, seed_attempts, settings
from tests.ports import free_port
from tests.record import record
from tests.redis_server import RedisFactory, RedisServer, nowhere_url
from tests.waiting import eventually, scaled

# --- pure parts: settings, times, request validation (no Redis is reached: validation answers first) ---


def test_settings_refuse_no_tokens_unless_lab() -> None:
    with pytest.raises(ValueError, match="no API tokens"):
        Settings()
    assert Settings(lab=True).lab
    with pytest.raises(ValueError, match="workers"):
        Settings(tokens=TOKENS, workers=0)


def test_settings_travel_to_workers_without_tokens() -> None:
    original = settings("redis://127.0.0.1:1/0", workers=3, slack=5.0)
    text = original.to_env()
    assert READ not in text and "sha256" in text
    assert Settings.from_env(text) == original


@pytest.mark.parametrize(
    ("given", "expected"), [("1", 1), ("64", 64), (" 2 ", 2), ("auto", "cores"), ("AUTO", "cores")]
)
def test_workers_a_number_or_auto_one_per_usable_core(given: str, expected: int | str) -> None:
    cores = min(64, len(os.sched_getaffinity(0)))
    assert server.WorkerCount().convert(given, None, None) == (cores if expected == "cores" else expected)


@pytest.mark.parametrize("given", ["0", "65", "-1", "two", ""])
def test_workers_refuses_what_is_not_a_count(given: str) -> None:
    with pytest.raises(click.BadParameter, match="auto"):
        server.WorkerCount().convert(given, None, None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:9", ("::1", 9)), ("localhost:0", ("localhost", 0))],
)
def test_parse_listen(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["8080", ":8080", "host:", "host:http", "host:70000"])
def test_parse_listen_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="listen address"):
        parse_listen(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1700000000", 1_700_000_000.0),
        ("1700000000.5", 1_700_000_000.5),
        (1_700_000_000, 1_700_000_000.0),
        ("2023-11-14T22:13:20Z", 1_700_000_000.0),
        ("2023-11-14T22:13:20", 1_700_000_000.0),
        ("2023-11-15T00:13:20+02:00", 1_700_000_000.0),
    ],
)
def test_parse_time(value: object, expected: float) -> None:
    assert parse_time(value) == expected


@pytest.mark.parametrize("value", ["yesterday", "nan", "inf", "-5", "1e20", True, "", None])
def test_parse_time_refuses(value: object) -> None:
    with pytest.raises(ValueError, match="time"):
        parse_time(value)


@pytest.fixture(scope="module")
def offline() -> Iterator[TestClient]:
    """The app pointed where no Redis listens: only validation and auth can answer 4xx here."""
    app = create_app(settings(nowhere_url()))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize(
    ("path", "field", "message"),
    [
        ("/v1/attempts?bogus=1", "bogus", "unknown parameter"),
        ("/v1/attempts?limit=1001", "limit", "less than or equal to 1000"),
        ("/v1/attempts?limit=0", "limit", "greater than or equal to 1"),
        ("/v1/attempts?limit=ten", "limit", "valid integer"),
        ("/v1/attempts?since=yesterday", "since", "ISO 8601"),
        ("/v1/attempts?since=200&until=100", "until", "time range inverted"),
        ("/v1/attempts?category=spam", "category", "mining"),
        ("/v1/attempts?reason=NOT%20A%20REASON", "reason", "pattern"),
        ("/v1/attempts?cursor=%20", "cursor", "pattern"),
        ("/v1/attempts/not-an-id", "attempt_id", "pattern"),
        ("/v1/stats?window=-1", "window", "greater than 0"),
        ("/v1/stats?by=colour", "by", "reason"),
        ("/v1/stats/series?buckets=1000", "buckets", "less than or equal to 120"),
        ("/v1/sandboxes/agents/timeline?until=2020-01-01T00:00:00Z&since=2021-01-01", "until", "inverted"),
        ("/v1/follow?sandbox=a&x=1", "x", "unknown parameter"),
        ("/v1/sandboxes?all=1", "all", "unknown parameter"),
        ("/v1/health?verbose=1", "verbose", "unknown parameter"),
        ("/metrics?name=x", "name", "unknown parameter"),
        ("/v1/attempts/01ARZ3NDEKTSV4RRFFQ69G5FAV?full=1", "full", "unknown parameter"),
    ],
)
def test_bad_parameters_are_400_naming_the_field(
    offline: TestClient, path: str, field: str | None, message: str
) -> None:
    response = offline.get(path, headers=auth(READ))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["field"] == field
    assert message in error["message"]


def _act(**overrides: Any) -> dict[str, Any]:
    return {"sandbox": "a", "id": "1", "kind": "x", "command": "", "start": 1, **overrides}


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"actions": []}, "actions", "at least 1"),
        ({}, "actions", "Field required"),
        ({"actions": [_act()], "more": 1}, "more", "unknown field"),
        ({"actions": [_act(kind="Shell")]}, "actions[0].kind", "pattern"),
        ({"actions": [_act(), _act(start="1")]}, "actions[1].start", "number"),
        ({"actions": [_act(start=5, end=4)]}, "actions[0]", "end is before start"),
        ({"actions": [_act(pid=4)]}, "actions[0].pid", "unknown field"),
        ({"actions": [_act()] * 1001}, "actions", "at most 1000"),
    ],
)
def test_bad_action_batches_are_400_naming_the_field(
    offline: TestClient, body: dict[str, Any], field: str, message: str
) -> None:
    response = offline.post("/v1/actions", json=body, headers=auth(REPORT))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["field"] == field
    assert message in response.json()["error"]["message"]


def test_malformed_json_and_oversized_bodies(offline: TestClient) -> None:
    headers = {**auth(REPORT), "Content-Type": "application/json"}
    response = offline.post("/v1/actions", content=b'{"actions": [', headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "body"
    response = offline.post("/v1/actions", content=b"[" + b" " * (MAX_BODY + 1) + b"]", headers=headers)
    assert response.status_code == 413
    assert response.json()["error"] == {"field": "body", "message": f"request body over {MAX_BODY} bytes"}

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
        yield b"["
        for _ in range(MAX_BODY // 65536 + 2):
            yield b" " * 65536

    response = offline.post("/v1/actions", content=chunked(), headers=headers)
    assert response.status_code == 413 and response.json()["error"]["field"] == "body"


def test_nan_in_json_refused(offline: TestClient) -> None:
    body = b'{"actions": [{"sandbox": "a", "id": "1", "kind": "x", "command": "", "start": NaN}]}'
    response = offline.post("/v1/actions", content=body, headers={**auth(REPORT), "Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "actions[0].start"


@pytest.mark.parametrize(
    ("method", "path", "token", "status"),
    [
        ("GET", "/v1/attempts", None, 401),
        ("GET", "/v1/attempts", "not-a-token-at-all", 401),
        ("GET", "/v1/attempts", REPORT, 403),
        ("GET", "/metrics", REPORT, 403),
        ("GET", "/metrics", None, 401),
        ("POST", "/v1/actions", READ, 403),
        ("GET", "/v1/follow", REPORT, 403),
        ("GET", "/v1/nothing", READ, 404),
        ("DELETE", "/v1/attempts", READ, 405),
    ],
)
def test_auth_and_routing_errors(offline: TestClient, method: str, path: str, token: str | None, status: int) -> None:
    headers = auth(token) if token else {}
    response = offline.request(method, path, headers=headers, json={"actions": []} if method == "POST" else None)
    assert response.status_code == status
    assert set(response.json()) == {"error"} and response.json()["error"]["message"]
    if status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_redis_down_is_503_not_500(offline: TestClient) -> None:
    response = offline.get("/v1/attempts", headers=auth(READ))
    assert response.status_code == 503
    assert "Redis is unreachable" in response.json()["error"]["message"]
    health = offline.get("/v1/health")
    assert health.status_code == 503
    assert health.json()["redis"] is False and health.json()["status"] == "degraded"
    metrics = offline.get("/metrics", headers=auth(ADMIN))
    assert metrics.status_code == 200 and "egress_redis_up 0.0" in metrics.text


def test_lab_without_tokens_lets_everyone_in() -> None:
    app = create_app(Settings(redis_url=nowhere_url(), lab=True))
    with TestClient(app, raise_server_exceptions=False) as lab:
        assert lab.get("/v1/sandboxes").status_code == 503  # past auth: only Redis is missing
        assert lab.get("/v1/stats?window=0").status_code == 400
    with_tokens = create_app(settings(nowhere_url(), lab=True))
    with TestClient(with_tokens, raise_server_exceptions=False) as lab:
        assert lab.get("/v1/sandboxes").status_code == 401  # a lab with tokens still checks them


def test_dashboard_files_need_no_token(offline: TestClient) -> None:
    page = offline.get("/dashboard")
    assert page.status_code == 200 and "<title>egress" in page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert offline.get("/dashboard/dashboard.js").headers["content-type"].startswith("text/javascript")
    assert offline.get("/dashboard/dashboard.css").status_code == 200
    assert offline.get("/dashboard/../app.py").status_code == 404


# --- against a real redis-server and the real query layer ---


@pytest.fixture(scope="module")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture(scope="module")
def now() -> float:
    """When this module's records were seeded: every seeded time is relative to it. The API reads the real clock,
    so a window "the last N seconds" is computed from the time that passed since (see `_window_since`)."""
    return time.time()


def _window_since(oldest: float) -> float:
    """A ``window`` (seconds before the API's now) that reaches back to ``oldest``, plus 30 s for the request."""
    return time.time() - oldest + 30


@pytest.fixture(scope="module")
def writer(redis_url: str, now: float) -> Iterator[RecordStore]:
    with tempfile.TemporaryDirectory(prefix="egt-api-spool-") as spool:
        store = RecordStore(redis_url, Path(spool), "gw1", retry_interval=0.0)
        store.write(seed_attempts(now))
        query.write_actions(store, seed_actions(now))
        yield store
        store.close()


@pytest.fixture(scope="module")
def live(redis_factory: RedisFactory) -> Iterator[tuple[str, RecordStore]]:
    """A Redis of its own and a writer for the tests that write while they read (follow, end to end), so that what
    they write never shows in the seeded module Redis the other tests count."""
    server = redis_factory.server()
    with tempfile.TemporaryDirectory(prefix="egt-api-live-") as spool:
        store = RecordStore(server.url, Path(spool), "gw1", retry_interval=0.0)
        yield server.url, store
        store.close()


@pytest.fixture(scope="module")
def client(redis_url: str, writer: RecordStore) -> Iterator[TestClient]:
    with TestClient(create_app(settings(redis_url)), raise_server_exceptions=True) as test_client:
        yield test_client


def _get(client: TestClient, path: str, token: str = READ, **params: Any) -> Any:
    response = client.get(path, params=params, headers=auth(token))
    assert response.status_code == 200, response.text
    return response.json()


def test_health(client: TestClient) -> None:
    body = client.get("/v1/health").json()
    assert body["status"] == "ok" and body["redis"] is True and body["version"]


def test_attempts_newest_first_with_filters(client: TestClient, now: float) -> None:
    every = _get(client, "/v1/attempts")["attempts"]
    assert [a["ts"] for a in every] == sorted((a.ts for a in seed_attempts(now)), reverse=True)
    assert {a["sandbox"] for a in _get(client, "/v1/attempts", sandbox="builders")["attempts"]} == {"builders"}
    assert [a["protocol"] for a in _get(client, "/v1/attempts", category="tunnel")["attempts"]] == ["ssh"]
    assert len(_get(client, "/v1/attempts", reason="not-allowlisted")["attempts"]) == 2
    by_host = _get(client, "/v1/attempts", destination="example.org")["attempts"]
    assert [a["host"] for a in by_host] == ["evil.example.org"]
    assert [a["dst"] for a in _get(client, "/v1/attempts", destination="198.51.100.7")["attempts"]] == ["198.51.100.7"]
    since_iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - 200))
    recent = _get(client, "/v1/attempts", since=since_iso, until=now - 45)["attempts"]
    assert [a["ts"] for a in recent] == [now - 60, now - 120]
    assert _get(client, "/v1/attempts", token=ADMIN, sandbox="nobody")["attempts"] == []


def test_attempts_pages_cover_everything_once(client: TestClient, now: float) -> None:
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params: dict[str, Any] = {"limit": 2, "until": now, **({"cursor": cursor} if cursor else {})}
        page = _get(client, "/v1/attempts", **params)
        seen += [a["id"] for a in page["attempts"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 5
    assert {a["ts"] for a in _get(client, "/v1/attempts", limit=5)["attempts"]} == {a.ts for a in seed_attempts(now)}


def test_malformed_cursor_is_400(client: TestClient) -> None:
    response = client.get("/v1/attempts", params={"cursor": "garbage"}, headers=auth(READ))
    assert response.status_code == 400
    assert response.json()["error"]["field"] == "cursor"


def test_attempt_with_correlated_actions(client: TestClient) -> None:
    ssh = _get(client, "/v1/attempts", category="tunnel")["attempts"][0]
    detail = _get(client, f"/v1/attempts/{ssh['id']}")
    assert detail["attempt"] == ssh
    assert [(a["id"], a["distance_s"]) for a in detail["actions"]] == [("a-2", 0.0)]
    pool = _get(client, "/v1/attempts", destination="203.0.113.10")["attempts"][0]
    links = _get(client, f"/v1/attempts/{pool['id']}")["actions"]
    assert [a["id"] for a in links] == ["a-1"]
    assert links[0]["command"].startswith("curl -sL")
    missing = client.get("/v1/attempts/01ARZ3NDEKTSV4RRFFQ69G5FAV", headers=auth(READ))
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "attempt_id"


def test_attempts_page_with_correlation(client: TestClient) -> None:
    page = _get(client, "/v1/attempts", correlate="true")
    by_id = {a["id"]: a for a in page["attempts"]}
    links = {
        by_id[key]["host"] or by_id[key]["dst"]: [x["id"] for x in value] for key, value in page["correlated"].items()
    }
    assert links["198.51.100.7"] == ["a-2"]
    assert links["pastebin.com"] == ["b-1"]  # still running: spans to now
    assert links["evil.example.org"] == ["b-1"]
    assert "correlated" not in _get(client, "/v1/attempts") or _get(client, "/v1/attempts")["correlated"] is None


def test_sandboxes_and_timeline(client: TestClient, now: float) -> None:
    assert {"agents", "builders"} <= set(_get(client, "/v1/sandboxes")["sandboxes"])
    line = _get(client, "/v1/sandboxes/agents/timeline", since=now - 3600)
    assert line["sandbox"] == "agents"
    kinds = [(item["type"], item.get("action", {}).get("id")) for item in line["items"]]
    assert kinds == [("action", "a-1"), ("attempt", None), ("attempt", None), ("action", "a-2"), ("attempt", None)]
    assert [item["related"] for item in line["items"] if item["type"] == "attempt"] == [["a-1"], ["a-1"], ["a-2"]]
    assert [item["ts"] for item in line["items"]] == sorted(item["ts"] for item in line["items"])
    assert _get(client, "/v1/sandboxes/nobody/timeline")["items"] == []
    assert line["truncated"] is False


def test_timeline_keeps_the_newest_and_says_it_truncated(client: TestClient, now: float) -> None:
    line = _get(client, "/v1/sandboxes/agents/timeline", since=now - 3600, limit=1)
    kinds = [(item["type"], item.get("action", {}).get("id")) for item in line["items"]]
    assert kinds == [("action", "a-2"), ("attempt", None)]
    whole = _get(client, "/v1/sandboxes/agents/timeline", since=now - 3600)["items"]
    assert line["items"][-1] == whole[-1]  # the newest attempt, not the oldest
    assert line["truncated"] is True
    assert _get(client, "/v1/sandboxes/agents/timeline", since=now - 3600, limit=3)["truncated"] is False


def test_a_timeline_without_actions_is_its_attempts_in_order(live: tuple[str, RecordStore], now: float) -> None:
    url, store = live
    sandbox = "quiet-timeline"
    attempts = [record(now - 50, sandbox=sandbox, dst=f"192.0.2.{n}") for n in range(3)]  # one time: id order
    attempts += [record(now - 40 + n, sandbox=sandbox, evidence="\udcff" if n == 1 else "") for n in range(3)]
    store.write(attempts)
    with TestClient(create_app(settings(url))) as test_client:
        line = _get(test_client, f"/v1/sandboxes/{sandbox}/timeline", since=now - 3600)
    expected = [(a.ts, a.id) for a in sorted(attempts, key=lambda a: (a.ts, a.id))]
    assert [(item["ts"], item["attempt"]["id"]) for item in line["items"]] == expected
    assert {item["type"] for item in line["items"]} == {"attempt"}
    assert all(item["related"] == [] for item in line["items"])
    assert [item["attempt"]["evidence"] for item in line["items"]][-2] == "\udcff"


def test_stats_and_series(client: TestClient, now: float) -> None:
    by_reason = _get(client, "/v1/stats", window=3600, by="reason")
    assert by_reason["counts"] == {"mining": 2, "tunnel": 1, "not-allowlisted": 4}
    assert (by_reason["window_s"], by_reason["by"]) == (3600, "reason")
    assert by_reason["since"] % 60 == 0 and 3540 <= by_reason["until"] - by_reason["since"] <= 3600  # whole minutes
    assert _get(client, "/v1/stats", window=3600, by="sandbox")["counts"] == {"agents": 3, "builders": 4}
    assert _get(client, "/v1/stats", window=3600, by="category")["counts"]["policy"] == 4
    destinations = _get(client, "/v1/stats", window=3600, by="destination")["counts"]
    assert sum(destinations.values()) == 7
    # A window reaching back past the builders' records (60 s before seeding), in whole minutes: what it counts is
    # what lies from its first minute on.
    recent = _get(client, "/v1/stats", window=_window_since(now - 60) + 60, by="sandbox")
    expected: dict[str, int] = {}
    for item in seed_attempts(now):
        if item.ts >= recent["since"]:
            expected[item.sandbox] = expected.get(item.sandbox, 0) + item.count
    assert recent["counts"] == expected and expected["builders"] == 4
    series = _get(client, "/v1/stats/series", window=3600, buckets=12, by="category")
    assert len(series["buckets"]) == 12
    totals: dict[str, int] = {}
    for bucket, following in zip(series["buckets"], series["buckets"][1:], strict=False):
        assert bucket["end"] == following["start"]  # 5 whole minutes each, back to back
    for bucket in series["buckets"]:
        assert bucket["end"] > bucket["start"]
        for key, value in bucket["counts"].items():
            totals[key] = totals.get(key, 0) + value
    assert totals == {"mining": 2, "tunnel": 1, "policy": 4}


def test_post_actions_idempotent(client: TestClient, writer: RecordStore, now: float) -> None:
    action = {
        "sandbox": "posters",
        "id": "p-1",
        "kind": "shell_command",
        "command": "nc -z 1.2.3.4 25",
        "start": now - 5,
    }
    response = client.post("/v1/actions", json={"actions": [action]}, headers=auth(REPORT))
    assert response.status_code == 200 and response.json() == {"accepted": 1}
    finished = {**action, "end": now - 4, "command": "x" * 5000}
    response = client.post("/v1/actions", json={"actions": [finished]}, headers=auth(ADMIN))
    assert response.status_code == 200
    (stored,) = query.read_actions(writer, "posters", now - 10, now)
    assert stored.end == now - 4 and len(stored.command) == 4096 and stored.received >= now
    bad = client.post("/v1/actions", json={"actions": [{**action, "sandbox": ""}]}, headers=auth(REPORT))
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "actions[0]"
    assert "sandbox" in bad.json()["error"]["message"]


def test_metrics(client: TestClient, writer: RecordStore) -> None:
    _get(client, "/v1/attempts", limit=1)
    # What a gateway component publishes (egress/gateway/recorder.py), as it would publish it.
    writer.add_counters("gw-test/proxy", {"decisions|proxy|block|mining": 2, "decisions|proxy|allow|": 5})
    response = client.get("/metrics", headers=auth(READ))
    assert response.status_code == 200
    text = response.text
    assert 'egress_attempts_window{reason="mining"} 2.0' in text
    assert 'egress_attempts_window_by_sandbox{sandbox="builders"} 4.0' in text
    assert "egress_redis_up 1.0" in text
    for name in ("egress_records_written_total", "egress_records_spooled_total", "egress_redis_errors_total"):
        assert name in text
    decisions = (
        'egress_gateway_decisions_total{action="%s",component="proxy",gateway="gw-test",reason="%s",worker="proxy"}'
    )
    assert f"{decisions % ('block', 'mining')} 2.0" in text
    assert f"{decisions % ('allow', '')} 5.0" in text
    assert 'egress_api_requests_total{method="GET",route="/v1/attempts"' in text


def test_openapi_describes_every_route(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/v1/health", "/v1/attempts", "/v1/attempts/{attempt_id}", "/v1/follow", "/v1/actions"} <= set(
        spec["paths"]
    )
    assert "/dashboard" not in spec["paths"]
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


def _sse(response: httpx.Response) -> Iterator[tuple[str, str]]:
    """The (event, data) pairs of a server-sent event stream, as they come."""
    name, data = "", ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and name:
            yield name, data
            name, data = "", ""


def test_follow_streams_new_records_over_real_uvicorn(live: tuple[str, RecordStore]) -> None:
    redis_url, writer = live
    server = ApiServer(create_app(settings(redis_url))).start()  # heartbeats every 0.5 s: reads never block long
    try:
        with httpx.Client(base_url=server.url, timeout=scaled(10)) as http:
            with http.stream("GET", "/v1/follow", params={"sandbox": "live"}, headers=auth(READ)) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                events = _sse(response)
                markers: set[str] = set()

                def following() -> bool:
                    """The stream starts at "now", once it has asked Redis: write markers until one comes back."""
                    marker = record(time.time(), sandbox="live", host="marker.test")
                    markers.add(marker.id)
                    writer.write([marker])
                    name, data = next(events)  # an attempt, or a heartbeat within 0.5 s
                    assert name == "attempt" and json.loads(data)["id"] in markers, (name, data)
                    return True

                eventually(following, timeout=15, interval=0)
                fresh = [record(time.time(), sandbox="live", sport=1000 + i) for i in range(3)]
                writer.write([record(time.time(), sandbox="other")])
                writer.write(fresh)
                got: list[str] = []

                def arrived() -> bool:
                    name, data = next(events)
                    if name == "attempt" and json.loads(data)["id"] not in markers:
                        got.append(json.loads(data)["id"])
                    assert len(got) >= len(fresh), got
                    return True

                eventually(arrived, timeout=15, interval=0)
            assert got == [r.id for r in fresh]  # in order, and nothing of the other sandbox
            with http.stream("GET", "/v1/follow", params={"sandbox": "quiet"}, headers=auth(READ)) as response:
                assert next(_sse(response))[0] == "heartbeat"
            assert http.get("/v1/follow", headers=auth(REPORT)).status_code == 403
    finally:
        server.stop()


def test_follow_limit_is_429(live: tuple[str, RecordStore]) -> None:
    redis_url, _ = live
    server = ApiServer(create_app(settings(redis_url, max_followers=1))).start()
    try:
        with (
            httpx.Client(base_url=server.url, timeout=scaled(10)) as http,
            http.stream("GET", "/v1/follow", headers=auth(READ)) as first,
        ):
            assert first.status_code == 200
            next(first.iter_lines())
            second = http.get("/v1/follow", headers=auth(READ))
            assert second.status_code == 429 and "follow streams" in second.json()["error"]["message"]
        with httpx.Client(base_url=server.url, timeout=scaled(10)) as http:

            def place_freed() -> bool:
                with http.stream("GET", "/v1/follow", headers=auth(READ)) as again:
                    assert again.status_code == 200, "a closed follow stream kept its place"
                return True

            eventually(place_freed, timeout=10, interval=0.2)
    finally:
        server.stop()


# --- end to end: the command line, a tokens file, two uvicorn workers ---


def _serve(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    code = "import sys; from egress.api.server import api_serve; sys.exit(api_serve(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )


def _stop(process: subprocess.Popen[str]) -> str:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=scaled(15))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=scaled(10))
    return process.stdout.read() if process.stdout else ""


def test_serve_refuses_to_start_without_tokens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The command in-process: the refusal comes before anything is served or forked (the end-to-end test below runs
    # the real process). Were the refusal gone, the command would reach `serve`: that fails the test, not a hang.
    def serve(settings: Settings) -> None:
        raise AssertionError(f"started serving on {settings.host}:{settings.port}")

    monkeypatch.setattr(server, "serve", serve)
    monkeypatch.setenv("EGRESS_API_TOKENS", "")
    runner = CliRunner()
    refused = runner.invoke(
        server.api_serve, ["--redis-url", "redis://127.0.0.1:1/0", "--listen", f"127.0.0.1:{free_port()}"]
    )
    assert refused.exit_code == 2, refused.output
    assert "no API tokens" in refused.output
    bad = tmp_path / "tokens.yaml"
    bad.write_text("tokens:\n  - name: x\n    token: short\n    roles: [read]\n")
    refused = runner.invoke(server.api_serve, ["--tokens", str(bad), "--listen", f"127.0.0.1:{free_port()}"])
    assert refused.exit_code == 2, refused.output
    assert f"{bad}:3:" in refused.output


def test_end_to_end_two_workers(live: tuple[str, RecordStore], tmp_path: Path) -> None:
    redis_url, writer = live
    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(
        f"tokens:\n  - {{name: ci, token: {READ}, roles: [read]}}\n"
        f"  - {{name: harness, token: {REPORT}, roles: [report]}}\n"
    )
    port = free_port()
    process = _serve(
        ["--redis-url", redis_url, "--tokens", str(tokens), "--listen", f"127.0.0.1:{port}", "--workers", "2",
         "--log-format", "json"]
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=scaled(5)) as http:

            def healthy() -> bool:
                assert process.poll() is None, _stop(process)
                try:
                    return http.get("/v1/health").status_code == 200
                except httpx.TransportError as error:
                    raise AssertionError(f"not answering yet: {error}") from error

            eventually(healthy, timeout=30, interval=0.1)
            start = time.time()
            action = {"sandbox": "e2e", "id": "run-1", "kind": "shell_command", "command": "xmrig -o pool:3333",
                      "start": start - 1, "end": start + 1}  # fmt: skip
            posted = http.post("/v1/actions", json={"actions": [action]}, headers=auth(REPORT))
            assert posted.json() == {"accepted": 1}
            attempt = record(start, sandbox="e2e")
            writer.write([attempt])
            for _ in range(4):  # whichever worker answers, the answer is the same
                detail = http.get(f"/v1/attempts/{attempt.id}", headers=auth(READ)).json()
                assert [a["id"] for a in detail["actions"]] == ["run-1"]
            assert http.get("/v1/attempts", headers=auth(REPORT)).status_code == 403
    finally:
        output = _stop(process)
    assert "Started parent process" in output or "Uvicorn running" in output, output
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]  # every line, uvicorn's too: JSON
    assert {line["component"] for line in lines} == {"api"}
    assert len({line["pid"] for line in lines}) >= 2, lines  # the parent and its worker processes alike


def test_several_workers_accept_connections_with_nagle_off() -> None:
    """uvicorn binds the socket of several workers with protocol 0, on which asyncio leaves Nagle's algorithm on:
    each keep-alive response's body then waited ~40 ms for the client's delayed ACK. The API's socket says TCP and
    sets TCP_NODELAY, and a connection accepted from it has both (as a worker process accepts it)."""
    config = server.NoDelayConfig("egress.api.server:app_from_env", factory=True, workers=2, host="127.0.0.1", port=0)
    with config.bind_socket() as listener:
        listener.listen()
        with socket.create_connection(listener.getsockname()) as client:
            connection, _ = listener.accept()
            with connection:
                assert client.fileno() > 0
                assert connection.proto == socket.IPPROTO_TCP  # asyncio's transport sets TCP_NODELAY on such ones
                assert connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
