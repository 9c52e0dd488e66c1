"""The front's last look at a connection whose client reset it before it could be served (red team 14).

A client can send a whole attempt in one write and reset the connection at once (``SO_LINGER`` 0): the kernel
keeps the bytes it received readable after the reset, but the socket is no longer connected (``getpeername``:
``ENOTCONN``), so mitmproxy, to which the front hands what it does not serve itself, cannot take it and closes it
unread. Nothing crossed, but the attempt went unrecorded: Stratum to a pool's allowed address, XMRig's login, a
ClientHello naming a pool. Before a handoff the front asks `reset_before_served`; for such a connection it judges
the bytes it can still peek with the gate, as it judges any first bytes (`Gate.on_first_bytes`), and a stream the
gate would have inspected as mitmproxy's relay would (the detectors; unidentified at the cap where the rule is
strict), and an HTTP request head never finished by the pool detectors (`Gate.on_unfinished_head`, red team 16);
it reports what is worth recording (`last_look`) and closes the connection. A reset that lands after
this look is mitmproxy's to read: the worker's hand-off ends the stream after the bytes and names the peer the
front accepted (`egress.proxy.mitm.server`, red team 15).
"""

from __future__ import annotations

import errno
import logging
import socket
import time
from collections.abc import Callable

from egress.decide import Verdict, decide_finding
from egress.decisions import DecidedFlow
from egress.detect.base import FlowMeta
from egress.detect.engine import unidentified_finding
from egress.policy.model import Sandbox
from egress.proxy.gate import Gate, Kind, flow_meta
from egress.proxy.httpjudge import fail_closed
from egress.proxy.peeked import peek_first_bytes

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
    An error judging attacker bytes is a block recorded as an inspection error (`httpjudge.fail_closed`); the
    caller closes the connection all the same."""
    peeked = peek_first_bytes(conn, peer, gate, destination)
    if peeked is None:
        return None
    sandbox, source, dst, data = peeked.sandbox, peeked.source, peeked.dst, peeked.data
    try:
        decision = gate.on_first_bytes(sandbox, flow_meta(source, dst), data, b"", watching=True)
        verdict = decision.verdict
        if verdict is None and decision.kind is Kind.INSPECT:
            verdict = _inspected(gate, sandbox, flow_meta(source, dst), data)
        if verdict is None:  # an HTTP head never finished, with a pool's lines in it (red team 16)
            verdict = gate.on_unfinished_head(sandbox, flow_meta(source, dst), data, "the client reset the connection")
    except Exception as exc:  # recorded as a block of what could not be judged, as the fast path's errors are
        log.exception("front: %s:%s reset: its bytes could not be judged", source[0], source[1])
        why = f"a reset client's {len(data)} bytes could not be judged: {type(exc).__name__}"
        return DecidedFlow(time.time(), sandbox.name, *source, *dst, "tcp", "", fail_closed(why))
    if verdict is None or not verdict.recorded:
        return None
    return DecidedFlow(time.time(), sandbox.name, *source, *dst, "tcp", decision.host, verdict)


def _inspected(gate: Gate, sandbox: Sandbox, meta: FlowMeta, data: bytes) -> Verdict | None:
    """What mitmproxy's inspected relay (`egress.proxy.mitm.layers`) would have decided on ``data``, all the
    stream there is: the detectors' finding, or, where the rule is strict, a stream they could not name by the
    cap (unidentified). Bytes before a stream's cap and behind it are what a client resetting after a long
    prefix leaves (16 KiB of blank lines before Stratum, red team 14)."""
    inspector = gate.inspector(meta)
    finding = inspector.feed_stream(True, data)
    if finding is not None:
        return decide_finding(sandbox, finding)
    if gate.strict(sandbox, meta) and inspector.unidentified:
        return decide_finding(sandbox, unidentified_finding(inspector))
    return None
