"""``HEAD`` wherever ``GET`` is answered (egress.api.middleware.HeadAsGet), over a real uvicorn and redis-server:
every GET route of the OpenAPI description and the dashboard's, the live follow stream included (its headers, then
the end), with the same status and headers as the GET and no body."""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from egress.api.app import create_app
from egress.record.store import RecordStore
from tests.api import ADMIN, ApiServer, auth, seed_attempts, settings
from tests.redis_server import RedisServer
from tests.waiting import eventually, scaled

_PARAMETERS = {"attempt_id": "01ARZ3NDEKTSV4RRFFQ69G5FAV", "sandbox": "agents", "number": "1"}
_OUTSIDE_THE_DESCRIPTION = ("/dashboard", "/dashboard/dashboard.js", "/dashboard/dashboard.css", "/openapi.json")


@pytest.fixture(scope="module")
def api(redis_server: RedisServer) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="egt-api-head-") as spool:
        writer = RecordStore(redis_server.url, Path(spool), "gw1", retry_interval=0.0)
        writer.write(seed_attempts(time.time()))
        writer.close()
    server = ApiServer(create_app(settings(redis_server.url))).start()
    try:
        yield server.url
    finally:
        server.stop()


def _get_paths(api: str) -> list[str]:
    description = httpx.get(f"{api}/openapi.json", timeout=scaled(10)).json()
    paths = [path for path, operations in description["paths"].items() if "get" in operations]
    return [re.sub(r"\{(\w+)\}", lambda m: _PARAMETERS[m[1]], path) for path in paths]


def test_every_get_route_answers_head_alike_without_a_body(api: str) -> None:
    paths = [*_get_paths(api), *_OUTSIDE_THE_DESCRIPTION]
    assert "/v1/follow" in paths and "/v1/attempts" in paths and "/metrics" in paths
    compared = []
    with httpx.Client(base_url=api, timeout=scaled(10), headers=auth(ADMIN)) as http:
        for path in paths:
            head = http.head(path)
            assert head.content == b"", path
            if path == "/v1/follow":  # a stream: its headers, then it ends (the request above returned)
                assert head.status_code == 200 and head.headers["content-type"].startswith("text/event-stream")
                continue
            get = http.get(path)
            assert head.status_code == get.status_code != 405, (path, head.status_code, get.status_code)
            assert head.headers["content-type"] == get.headers["content-type"], path
            if path in _OUTSIDE_THE_DESCRIPTION:  # fixed bodies (the others say the time or count requests)
                assert head.headers["content-length"] == get.headers["content-length"], path
            compared.append(path)
        assert len(compared) >= 12, compared
        # A method the route does not take stays 405, for HEAD's GET as for any other.
        assert http.head("/v1/actions").status_code == 405
        assert http.head("/v1/attempts", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401


def test_head_of_the_follow_stream_frees_its_place(redis_server: RedisServer) -> None:
    server = ApiServer(create_app(settings(redis_server.url, max_followers=1))).start()
    try:
        with httpx.Client(base_url=server.url, timeout=scaled(10), headers=auth(ADMIN)) as http:
            assert http.head("/v1/follow").status_code == 200

            def place_freed() -> bool:
                with http.stream("GET", "/v1/follow") as response:
                    assert response.status_code == 200, "a HEAD of the stream kept its place"
                return True

            eventually(place_freed, timeout=10, interval=0.2)
    finally:
        server.stop()
