"""Blocking reads for the tests' own clients and servers (and bench/gateway.py's load generator): read on until a
marker has arrived, or until enough bytes have, each a ConnectionError naming what was awaited if the peer closes
first.

Imports nothing of the project: the programs the lab tests run in a namespace (``python -c`` snippets, the kits
under tests/security/) use it as well as the test processes.
"""

from __future__ import annotations

import socket


def _more(sock: socket.socket, size: int, closed: str) -> bytes:
    chunk = sock.recv(size)
    if not chunk:
        raise ConnectionError(closed)
    return chunk


def recv_until(sock: socket.socket, marker: bytes, data: bytes = b"", *, closed: str, size: int = 65536) -> bytes:
    """``data`` (what was read already) read on from ``sock``, ``size`` bytes a call at most, until it holds
    ``marker``: all of it, what follows the marker too. ConnectionError(``closed``) if the peer closes first."""
    while marker not in data:
        data += _more(sock, size, closed)
    return data


def recv_at_least(sock: socket.socket, count: int, data: bytes = b"", *, closed: str, size: int = 65536) -> bytes:
    """``data`` read on from ``sock`` until it holds ``count`` bytes or more (all that was read).
    ConnectionError(``closed``) if the peer closes first."""
    while len(data) < count:
        data += _more(sock, size, closed)
    return data
