"""What the front can see of a connection before it serves or hands it off: its sandbox, its original destination
and the client's first bytes, peeked (nothing consumed). `firstlook` (a refusal on those bytes) and `lastlook` (a
client that reset before it was served) judge the same three things."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

from egress.policy.model import Sandbox
from egress.proxy.gate import HEAD_WAIT_LIMIT, Gate

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Peeked:
    """A connection's sandbox, its client's address, its original destination and the client's first bytes."""

    sandbox: Sandbox
    source: tuple[str, int]
    dst: tuple[str, int]
    data: bytes
    """Up to the front's `HEAD_WAIT_LIMIT`, never empty; still unread in the socket."""


def peek_first_bytes(
    conn: socket.socket,
    peer: tuple[str, int],
    gate: Gate,
    destination: Callable[[socket.socket], tuple[str, int]],
) -> Peeked | None:
    """``conn``'s `Peeked`, or None: no sandbox for ``peer``, no original destination any more, nothing to read yet
    (a non-blocking socket), the client gone, or no bytes at all."""
    sandbox = gate.sandbox(str(peer[0]))
    if sandbox is None:
        return None
    source = (str(peer[0]), int(peer[1]))
    try:
        dst = destination(conn)
        data = conn.recv(HEAD_WAIT_LIMIT, socket.MSG_PEEK)
    except OSError as exc:
        log.debug("front: %s:%s: first bytes not readable: %s", source[0], source[1], exc)
        return None
    if not data:
        return None
    return Peeked(sandbox, source, dst, data)
