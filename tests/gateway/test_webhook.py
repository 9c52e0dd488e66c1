"""`egress.gateway.webhook`: a real POST to an HTTP server on loopback; retries and give-up with a fake post."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import ClassVar

import pytest

from egress.gateway.webhook import ATTEMPTS, Webhooks, http_post
from tests.waiting import eventually


class _Hook(http.server.BaseHTTPRequestHandler):
    bodies: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.bodies.append((self.path, self.headers.get("Content-Type", ""), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    bodies: list[tuple[str, str, bytes]] = []
    handler = type("Hook", (_Hook,), {"bodies": bodies})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook/token", bodies
    finally:
        server.shutdown()
        server.server_close()


def test_a_quarantine_is_posted_as_json(hook: tuple[str, list[tuple[str, str, bytes]]]) -> None:
    url, bodies = hook
    hooks = Webhooks()
    try:
        hooks.call(url, {"event": "quarantine", "sandbox": "agent"})
        eventually(lambda: len(bodies) == 1, timeout=30)
    finally:
        hooks.close()
    path, content_type, body = bodies[0]
    assert (path, content_type) == ("/hook/token", "application/json")
    assert json.loads(body) == {"event": "quarantine", "sandbox": "agent"}


def test_an_error_status_is_retried_then_given_up() -> None:
    statuses = [500, 503, 204]
    pauses: list[float] = []
    hooks = Webhooks(post=lambda url, body, timeout: statuses.pop(0), sleep=pauses.append)
    try:
        assert hooks.deliver("http://127.0.0.1:9/", {"a": 1})
        assert pauses == [1.0, 2.0]

        def refuse(url: str, body: bytes, timeout: float) -> int:
            raise ConnectionRefusedError("refused")

        failing = Webhooks(post=refuse, sleep=pauses.append)
        assert not failing.deliver("http://127.0.0.1:9/", {"a": 1})
        failing.close()
        assert len(pauses) == 2 + ATTEMPTS - 1
    finally:
        hooks.close()


def test_nothing_listening_is_an_oserror() -> None:
    with pytest.raises(OSError):
        http_post("http://127.0.0.1:9/", b"{}", 5.0)
