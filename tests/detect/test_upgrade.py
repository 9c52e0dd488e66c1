"""egress.detect.upgrade: an Upgrade to anything but a WebSocket (asked for, or switched to by a 101) is a tunnel;
the proxy and the scanner share `refused`."""

from __future__ import annotations

import pytest

from egress.detect import upgrade
from egress.detect.base import Category
from tests.detect.feeding import feed_every_split, feed_stream, meta

WEBSOCKET = (
    b"GET /chat HTTP/1.1\r\nHost: example.org\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
H2C = b"GET / HTTP/1.1\r\nHost: example.org\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n"
PLAIN = b"GET /index.html HTTP/1.1\r\nHost: example.org\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.mark.parametrize(
    ("method", "value", "allowed", "refused"),
    [
        ("GET", None, (), False),
        ("GET", "websocket", (), False),
        ("GET", "WebSocket", (), False),
        ("POST", "websocket", (), True),
        ("GET", "h2c", (), True),
        ("GET", "rawtcp", (), True),
        ("GET", "TLS/1.0", (), True),
        ("GET", "h2c", ("h2c",), False),
        ("GET", "websocket, h2c", ("h2c",), True),
    ],
)
def test_refused_is_the_shared_judgement(
    method: str, value: str | None, allowed: tuple[str, ...], refused: bool
) -> None:
    found = upgrade.refused(method, value, allowed)
    assert (found is not None) is refused
    if found is not None:
        assert (found.category, found.protocol, found.detector) == (Category.TUNNEL, "unknown-upgrade", "upgrade")


@pytest.mark.parametrize("request_head", [H2C, PLAIN + H2C], ids=["first", "pipelined"])
def test_a_request_asking_for_another_protocol_is_found_at_every_split(request_head: bytes) -> None:
    results = feed_every_split(upgrade.detect, request_head, b"", meta(80))
    assert all(found is not None and found.protocol == "unknown-upgrade" for found in results)


def test_a_101_switching_to_another_protocol_is_found() -> None:
    switched = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: rawtcp\r\nConnection: Upgrade\r\n\r\n"
    found = feed_stream(upgrade.detect, PLAIN, switched, meta(80))
    assert found is not None and "rawtcp" in found.evidence


@pytest.mark.parametrize(
    ("client", "server"),
    [
        (WEBSOCKET, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
        (PLAIN, OK),
        (PLAIN + PLAIN, OK + OK),
        (b"SSH-2.0-OpenSSH_9.6\r\n", b""),
    ],
    ids=["websocket", "plain", "keep-alive", "not-http"],
)
def test_websockets_and_plain_http_are_clean(client: bytes, server: bytes) -> None:
    assert all(found is None for found in feed_every_split(upgrade.detect, client, server, meta(80)))
