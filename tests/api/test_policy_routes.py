"""``/v1/policy`` (egress.api.routes.policy) on the real app and a real redis-server: apply (admin only), refuse
an invalid policy with every problem and nothing stored, history, rollback, and what each gateway runs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from egress.api.app import create_app
from egress.record.policy_store import GatewayReport, PolicyHistory
from tests.api import ADMIN, READ, REPORT, auth, settings
from tests.redis_server import RedisServer, nowhere_url

POLICY = """version: 1
sandboxes:
  {name}:
    sources: [10.0.0.0/8]
    mode: enforce
    allow:
      hosts: [allowed.test:443]
"""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[TestClient]:
    redis_server.flush()
    with TestClient(create_app(settings(redis_server.url)), raise_server_exceptions=True) as test_client:
        yield test_client


@pytest.fixture
def history(redis_server: RedisServer) -> Iterator[PolicyHistory]:
    made = PolicyHistory.from_url(redis_server.url)
    yield made
    made.close()


def _apply(client: TestClient, text: str, token: str = ADMIN) -> dict[str, object]:
    answer = client.post("/v1/policy", json={"text": text, "source": "change-42"}, headers=auth(token))
    assert answer.status_code == 200, answer.text
    body: dict[str, object] = answer.json()
    return body


def test_admin_applies_and_everyone_with_read_sees_it(client: TestClient, history: PolicyHistory) -> None:
    assert client.get("/v1/policy", headers=auth(READ)).json() == {"applied": None, "gateways": []}
    body = _apply(client, POLICY.format(name="one"))
    assert body["unchanged"] is False
    applied = client.get("/v1/policy", headers=auth(READ)).json()["applied"]
    assert applied["version"] == 1 and applied["digest"] == _digest(POLICY.format(name="one"))
    assert applied["who"] == "oncall" and applied["source"] == "change-42"  # the token's name
    assert history.text(1) == POLICY.format(name="one")
    again = _apply(client, POLICY.format(name="one"))
    assert again["unchanged"] is True and history.applied() is not None and history.applied().version == 1  # type: ignore[union-attr]


@pytest.mark.parametrize("token", [READ, REPORT])
def test_only_admin_may_apply(client: TestClient, history: PolicyHistory, token: str) -> None:
    answer = client.post("/v1/policy", json={"text": POLICY.format(name="x")}, headers=auth(token))
    assert answer.status_code == 403
    assert client.post("/v1/policy", json={"text": POLICY.format(name="x")}).status_code == 401
    assert client.post("/v1/policy/rollback", json={}, headers=auth(token)).status_code == 403
    assert history.applied() is None


def test_an_invalid_policy_is_refused_with_every_problem_and_nothing_stored(
    client: TestClient, history: PolicyHistory
) -> None:
    _apply(client, POLICY.format(name="good"))
    bad = POLICY.format(name="bad") + "surprise: true\nother: 1\n"
    answer = client.post("/v1/policy", json={"text": bad}, headers=auth(ADMIN))
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["field"] == "text" and "surprise" in error["message"] and "other" in error["message"]
    applied = history.applied()
    assert applied is not None and applied.version == 1 and len(history.history()) == 1


def test_history_versions_and_rollback(client: TestClient, history: PolicyHistory) -> None:
    for name in ("one", "two", "three"):
        _apply(client, POLICY.format(name=name))
    versions = client.get("/v1/policy/history", headers=auth(READ)).json()["versions"]
    assert [v["version"] for v in versions] == [3, 2, 1]
    text = client.get("/v1/policy/versions/1", headers=auth(READ)).json()
    assert text == {"version": 1, "text": POLICY.format(name="one")}
    assert client.get("/v1/policy/versions/9", headers=auth(READ)).status_code == 404
    back = client.post("/v1/policy/rollback", json={}, headers=auth(ADMIN)).json()  # to the one before: two
    assert back["version"]["version"] == 4 and back["version"]["rollback_of"] == 2
    assert history.text(4) == POLICY.format(name="two")
    to_one = client.post("/v1/policy/rollback", json={"version": 1}, headers=auth(ADMIN)).json()
    assert to_one["version"]["rollback_of"] == 1 and to_one["version"]["digest"] == _digest(POLICY.format(name="one"))
    missing = client.post("/v1/policy/rollback", json={"version": 99}, headers=auth(ADMIN))
    assert missing.status_code == 404 and missing.json()["error"]["field"] == "version"


def test_what_each_gateway_runs(client: TestClient, history: PolicyHistory) -> None:
    _apply(client, POLICY.format(name="one"))
    history.report(GatewayReport("gw-2", "failed", "d0", None, 2.0, wanted=1, error="nftables: syntax error"))
    history.report(GatewayReport("gw-1", "applied", _digest(POLICY.format(name="one")), 1, 1.0, wanted=1))
    gateways = client.get("/v1/policy", headers=auth(READ)).json()["gateways"]
    assert [(g["gateway"], g["state"], g["version"]) for g in gateways] == [
        ("gw-1", "applied", 1),
        ("gw-2", "failed", None),
    ]
    assert gateways[1]["error"] == "nftables: syntax error"


def test_redis_away_is_503_and_nothing_else() -> None:
    with TestClient(create_app(settings(nowhere_url())), raise_server_exceptions=False) as offline:
        assert offline.get("/v1/policy", headers=auth(READ)).status_code == 503
        answer = offline.post("/v1/policy", json={"text": POLICY.format(name="x")}, headers=auth(ADMIN))
        assert answer.status_code == 503
