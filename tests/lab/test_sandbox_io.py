"""Client plumbing: how failures are named, and the HTTP/1.1 client over a socket pair (no network)."""

from __future__ import annotations

import errno
import socket
import ssl
import threading

import pytest

from egress.detect import dns
from egress.lab import sandbox_io
from egress.lab.sandbox_io import Failed, Response


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (Failed("blocked", "x"), "blocked"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "refused"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), "refused"),
        (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), "blocked"),
        (BrokenPipeError(errno.EPIPE, "Broken pipe"), "blocked"),
        (TimeoutError("timed out"), "timeout"),
        (ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), "blocked"),
        (ssl.SSLError(1, "wrong version number"), "error"),
        (dns.DnsError("cut"), "error"),
        (ValueError("odd"), "error"),
    ],
)
def test_classify(error: BaseException, outcome: str) -> None:
    assert sandbox_io.classify(error)[0] == outcome


@pytest.mark.parametrize(("status", "outcome"), [(403, "blocked"), (404, "error"), (502, "error")])
def test_http_verdict(status: int, outcome: str) -> None:
    with pytest.raises(Failed) as caught:
        sandbox_io.http_verdict(Response(status, {}, b"denied: stratum to pool.lab\nmore"))
    assert caught.value.outcome == outcome
    assert f"HTTP {status} denied: stratum to pool.lab" == caught.value.detail


def _serve_once(sock: socket.socket, reply: bytes) -> threading.Thread:
    def run() -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
        sock.sendall(reply)
        sock.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello",
        b"HTTP/1.0 200 OK\r\nX-A: b\r\n\r\nhello",  # close-delimited
    ],
)
def test_http_reads_the_body(reply: bytes) -> None:
    mine, theirs = socket.socketpair()
    mine.settimeout(2)
    thread = _serve_once(theirs, reply)
    response = sandbox_io.http(mine, "GET", "/", "allowed.lab")
    thread.join(2)
    mine.close()
    assert (response.status, response.body, response.headers["x-a"]) == (200, b"hello", "b")


def test_http_closed_before_answer_is_blocked() -> None:
    mine, theirs = socket.socketpair()
    mine.settimeout(2)
    thread = _serve_once(theirs, b"")
    with pytest.raises(Failed) as caught:
        sandbox_io.http(mine, "GET", "/", "allowed.lab")
    thread.join(2)
    mine.close()
    assert caught.value.outcome == "blocked"


def test_resolve_falls_back_only_when_asked() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # a nameserver that never answers
        silent.bind(("127.0.0.1", 0))
        ctx = sandbox_io.Context(nameservers=("127.0.0.1",), timeout=0.3, dns_port=silent.getsockname()[1])
        with pytest.raises(Failed) as caught:
            sandbox_io.resolve(ctx, "pool.lab")
        assert caught.value.outcome == "timeout"
        assert sandbox_io.resolve(ctx, "pool.lab", "pool") == "198.18.10.3"
        assert "used 198.18.10.3" in ctx.notes[0]
