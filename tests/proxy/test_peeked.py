"""egress/proxy/peeked.py: what the front reads of a connection before it serves it or hands it off, on loopback
with real sockets and the real gate (as tests/proxy/test_lastlook.py)."""

from __future__ import annotations

import socket

from egress.proxy.peeked import peek_first_bytes
from tests.proxy.test_front import allowed_gate

PORT = 4444
OPENING = b"\x16\x03\x01 any first bytes"


def _pair() -> tuple[socket.socket, tuple[str, int], socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        conn, peer = listener.accept()
    return conn, peer, client


def _to_port(_: socket.socket) -> tuple[str, int]:
    return ("127.0.0.1", PORT)


def test_the_first_bytes_are_peeked_with_the_sandbox_and_destination() -> None:
    conn, peer, client = _pair()
    with conn, client:
        client.sendall(OPENING)
        conn.setblocking(True)
        peeked = peek_first_bytes(conn, peer, allowed_gate(PORT), _to_port)
        assert peeked is not None
        assert (peeked.sandbox.name, peeked.source, peeked.dst) == ("box", peer, ("127.0.0.1", PORT))
        assert peeked.data == OPENING
        assert conn.recv(4096) == OPENING  # nothing consumed


def test_nothing_to_judge_is_none() -> None:
    gate = allowed_gate(PORT)
    conn, peer, client = _pair()
    with conn, client:
        conn.setblocking(False)
        assert peek_first_bytes(conn, peer, gate, _to_port) is None  # nothing sent yet
        assert peek_first_bytes(conn, ("192.0.2.1", peer[1]), gate, _to_port) is None  # no sandbox

        def gone(_: socket.socket) -> tuple[str, int]:
            raise OSError(2, "no original destination")

        client.sendall(OPENING)
        conn.setblocking(True)
        assert peek_first_bytes(conn, peer, gate, gone) is None
        client.shutdown(socket.SHUT_WR)
        assert conn.recv(4096) == OPENING
        assert peek_first_bytes(conn, peer, gate, _to_port) is None  # the end: no bytes
