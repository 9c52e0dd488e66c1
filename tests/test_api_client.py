"""The harness client against a real HTTP server on loopback that takes ``POST /v1/actions`` the way the API
does: bearer token, ``{"actions": [...]}`` with unknown fields refused, 400 with ``{"error": {field, message}}``."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from egress.api_client import EgressClient, EgressError
from egress.record.actions import ActionRecord
from tests.waiting import eventually, scaled

TOKEN = "report-token-1"


class _ActionsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.stored: dict[tuple[str, str], ActionRecord] = {}
        self.requests: list[list[dict[str, Any]]] = []
        self.fail_next = 0
        """Answer this many next requests with 503 (Redis away)."""
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: _ActionsServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/v1/actions":
            return self._reply(404, {"error": {"field": None, "message": "not found"}})
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._reply(401, {"error": {"field": "Authorization", "message": "a bearer token is required"}})
        with self.server.lock:
            if self.server.fail_next:
                self.server.fail_next -= 1
                return self._reply(503, {"error": {"field": None, "message": "Redis unavailable"}})
        try:
            batch = json.loads(body)
            if set(batch) != {"actions"} or not 1 <= len(batch["actions"]) <= 1000:
                raise ValueError("body must be {actions: [1 to 1000 actions]}")
        except ValueError as error:
            return self._reply(400, {"error": {"field": None, "message": str(error)}})
        records = []
        for index, item in enumerate(batch["actions"]):
            if "received" in item:
                return self._reply(400, {"error": {"field": f"actions[{index}].received", "message": "extra field"}})
            try:
                records.append(ActionRecord.from_json({**item, "received": time.time()}))
            except ValueError as error:
                return self._reply(400, {"error": {"field": f"actions[{index}]", "message": str(error)}})
        with self.server.lock:
            self.server.requests.append(batch["actions"])
            for record in records:
                self.server.stored[(record.sandbox, record.id)] = record
        self._reply(200, {"accepted": len(records)})


@pytest.fixture
def server() -> Iterator[_ActionsServer]:
    instance = _ActionsServer()
    thread = threading.Thread(target=instance.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield instance
    finally:
        instance.shutdown()
        instance.server_close()
        thread.join(timeout=scaled(5))


def _client(server: _ActionsServer, **options: Any) -> EgressClient:
    settings: dict[str, Any] = {"timeout": scaled(2.0), "backoff": 0.01}
    settings.update(options)
    return EgressClient(server.base_url + "/", TOKEN, **settings)


def test_report_actions_sends_batches(server: _ActionsServer) -> None:
    client = _client(server, batch_size=4)
    actions = [ActionRecord("agents", f"a{i}", "tool_call", f"tool {i}", 100.0 + i, 101.0 + i) for i in range(10)]
    assert client.report_actions([*actions[:9], {**actions[9].to_json()}]) == 10
    assert [len(batch) for batch in server.requests] == [4, 4, 2]
    assert server.stored[("agents", "a3")].command == "tool 3"
    assert all("received" not in item for batch in server.requests for item in batch)
    assert client.sent == 10


def test_refusals_raise_with_the_field_and_are_not_repeated(server: _ActionsServer) -> None:
    client = _client(server)
    with pytest.raises(EgressError) as caught:
        client.report_actions([{"sandbox": "agents", "id": "x", "kind": "BAD", "command": "", "start": 1.0}])
    assert (caught.value.status, caught.value.field) == (400, "actions[0]")
    assert "kind" in caught.value.message
    with pytest.raises(EgressError, match="401"):
        EgressClient(server.base_url, "wrong").report_actions([ActionRecord("a", "b", "other", "", 1.0, None)])
    with pytest.raises(ValueError, match="colour"):
        client.report_actions([{"sandbox": "a", "id": "b", "kind": "other", "command": "", "start": 1.0, "colour": 1}])


def test_server_errors_are_retried_then_reported(server: _ActionsServer) -> None:
    client = _client(server, retries=3)
    server.fail_next = 2
    assert client.report_actions([ActionRecord("agents", "r1", "other", "", 1.0, 2.0)]) == 1
    server.fail_next = 10
    with pytest.raises(EgressError, match="503"):
        client.report_actions([ActionRecord("agents", "r2", "other", "", 1.0, 2.0)])


def test_nothing_listening_is_an_error_after_retries() -> None:
    client = EgressClient("http://127.0.0.1:9", TOKEN, retries=1, backoff=0.01, timeout=1.0)
    with pytest.raises(EgressError) as caught:
        client.report_actions([ActionRecord("agents", "x", "other", "", 1.0, 2.0)])
    assert caught.value.status == 0


def test_action_context_times_the_body_and_posts_on_close(server: _ActionsServer) -> None:
    client = _client(server, flush_interval=60)
    before = time.time()
    with client.action("agents", "cmd-1", "shell_command", "pip install foo") as action:
        action["command"] += " --quiet"
    with pytest.raises(RuntimeError), client.action("agents", "cmd-2", "shell_command", "false"):
        raise RuntimeError("the command failed")
    assert server.requests == []  # batched: nothing sent yet
    client.close()
    first, second = server.stored[("agents", "cmd-1")], server.stored[("agents", "cmd-2")]
    assert first.command == "pip install foo --quiet"
    assert first.end is not None
    assert before <= first.start <= first.end <= time.time()  # the body ran between the two stamps
    assert second.end is not None
    assert len(server.requests) == 1
    with pytest.raises(RuntimeError, match="closed"):
        client.queue(ActionRecord("agents", "late", "other", "", 1.0, 2.0))


def _stored(server: _ActionsServer, *keys: tuple[str, str]) -> Callable[[], bool]:
    def check() -> bool:
        with server.lock:
            missing = [key for key in keys if key not in server.stored]
        assert not missing, f"not stored yet: {missing}"
        return True

    return check


def test_the_flusher_sends_a_full_batch_at_once(server: _ActionsServer) -> None:
    client = _client(server, batch_size=3, flush_interval=3600)  # only a full batch can go out
    for index in range(3):
        client.queue(ActionRecord("agents", f"q{index}", "other", "", 1.0, 2.0))
    eventually(_stored(server, *(("agents", f"q{index}") for index in range(3))))
    assert [len(batch) for batch in server.requests] == [3]
    client.queue(ActionRecord("agents", "q3", "other", "", 1.0, 2.0))
    client.close()  # sends what is left
    assert [len(batch) for batch in server.requests] == [3, 1]


def test_the_flusher_sends_an_old_batch(server: _ActionsServer) -> None:
    client = _client(server, batch_size=100, flush_interval=0.05)
    with client.action("agents", None, "tool_call", "search"):
        pass
    eventually(lambda: len(server.requests) == 1)
    assert [len(batch) for batch in server.requests] == [1]
    client.close()


def test_a_running_report_is_replaced_by_the_finished_one(server: _ActionsServer) -> None:
    client = _client(server, flush_interval=0.05)
    with client.action("agents", "long", "shell_command", "make", report_start=True):
        eventually(_stored(server, ("agents", "long")))
        assert server.stored[("agents", "long")].end is None
    client.close()
    assert server.stored[("agents", "long")].end is not None


def test_queued_actions_survive_an_outage(server: _ActionsServer) -> None:
    client = _client(server, flush_interval=0.05, retries=0)
    server.fail_next = 3
    client.queue(ActionRecord("agents", "kept", "other", "", 1.0, 2.0))
    eventually(_stored(server, ("agents", "kept")))
    assert server.fail_next == 0  # it really went through the outage
    client.close()


def test_bad_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        EgressClient("http://127.0.0.1:9", TOKEN, batch_size=1001)
