"""``/v1/quarantine`` (egress.api.routes.quarantine) on the real app and a real redis-server: what is cut off and
every step (read), releasing (admin only, recorded under the token's name), 404 for a sandbox not cut off."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from egress.api.app import create_app
from egress.record.quarantine_store import Entry, QuarantineStore
from tests.api import ADMIN, READ, REPORT, auth, settings
from tests.redis_server import RedisServer


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[TestClient]:
    redis_server.flush()
    with TestClient(create_app(settings(redis_server.url)), raise_server_exceptions=True) as test_client:
        yield test_client


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[QuarantineStore]:
    made = QuarantineStore.from_url(redis_server.url)
    yield made
    made.close()


def test_a_quarantine_is_shown_and_released_by_admin_only(client: TestClient, store: QuarantineStore) -> None:
    assert client.get("/v1/quarantine", headers=auth(READ)).json() == {"quarantined": [], "events": []}
    entry = Entry("agent", 1_700_000_000.0, "gw1", "3 findings (mining) within 600 s", 3)
    assert store.quarantine(entry)
    shown = client.get("/v1/quarantine", headers=auth(READ)).json()
    assert shown["quarantined"] == [entry.to_json()]
    assert [(e["event"], e["who"]) for e in shown["events"]] == [("quarantine", "gw1")]
    for token in (READ, REPORT):
        assert client.post("/v1/quarantine/agent/release", headers=auth(token)).status_code == 403
    assert client.post("/v1/quarantine/agent/release").status_code == 401
    assert set(store.active()) == {"agent"}
    answer = client.post("/v1/quarantine/agent/release", headers=auth(ADMIN))
    assert answer.status_code == 200 and answer.json() == {"released": entry.to_json()}
    assert store.active() == {}
    assert [(e.event, e.who) for e in store.events()] == [("release", "oncall"), ("quarantine", "gw1")]
    assert client.post("/v1/quarantine/agent/release", headers=auth(ADMIN)).status_code == 404
