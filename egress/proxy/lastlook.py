"""The front's last look at a connection whose client reset it before it could be served (red team 14).

A client can send a whole attempt in one write and reset the connection at once (``SO_LINGER`` 0): the kernel
keeps the bytes it received readable after the reset, but the socket is no longer connected (``getpeername``:
``ENOTCONN``), so mitmproxy, to which the front hands what it does not serve itself, cannot take it and closes it
unread. Nothing crossed, but the attempt went unrecorded: Stratum to a pool's allowed address, XMRig's login, a
ClientHello naming a pool. Before a handoff the front asks `reset_before_served`; for such a connection it judges
the bytes it can still peek with the gate, as it judges any first bytes (`Gate.on_first_bytes`), reports what is
worth recording (`last_look`), and closes it. Only a reset that lands between this look and mitmproxy's reading
still loses the record (a window of one scheduling step); nothing is forwarded either way.
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Callable

from egress.decisions import DecidedFlow
from egress.proxy.gate import HEAD_WAIT_LIMIT, Gate, flow_meta

log = logging.getLogger(__name__)


def reset_before_served(conn: socket.socket) -> bool:
    """Whether the client of ``conn`` is gone already (reset: the socket is no longer connected)."""
    try:
        conn.getpeername()
    except OSError as exc:
        return exc.errno == errno.ENOTCONN
    return False


def last_look(
    conn: socket.socket,
    peer: tuple[str, int],
    gate: Gate,
    destination: Callable[[socket.socket], tuple[str, int]],
) -> DecidedFlow | None:
    """The decision worth recording on what ``conn``'s client sent before it reset (peeked, up to the front's
    `HEAD_WAIT_LIMIT`), or None: no sandbox, no bytes, no original destination any more, or nothing to record.
    An error judging attacker bytes records nothing more; the caller closes the connection all the same."""
    sandbox = gate.sandbox(str(peer[0]))
    if sandbox is None:
        return None
    source = (str(peer[0]), int(peer[1]))
    try:
        dst = destination(conn)
        data = conn.recv(HEAD_WAIT_LIMIT, socket.MSG_PEEK)
    except OSError as exc:
        log.debug("front: %s:%s reset, not readable: %s", source[0], source[1], exc)
        return None
    if not data:
        return None
    try:
        decision = gate.on_first_bytes(sandbox, flow_meta(source, dst), data, b"", watching=True)
    except Exception:
        log.exception("front: %s:%s reset: its bytes could not be judged", source[0], source[1])
        return None
    if decision.verdict is None:
        return None
    return DecidedFlow(time.time(), sandbox.name, *source, *dst, "tcp", decision.host, decision.verdict)
