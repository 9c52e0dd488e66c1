"""The front's refusal of a connection on its client's first bytes, before a handoff to mitmproxy (issue 15, ttb).

A connection the front does not serve itself goes to mitmproxy, which dials the destination (eagerly: server-first
protocols need it), reads the client's first bytes, asks the gate (`Gate.on_first_bytes`) and, on a refusal
(`Kind.REFUSE`: Stratum to a pool's allowed address, a ClientHello naming a pool, an opening the rule does not
expect), records it and closes both sides. The front has peeked at those bytes already; `refusal` asks the gate the
same question on them, as mitmproxy would (``watching`` only where no network rule covers the destination), and a
refusal is recorded and the connection closed in the front: no handoff, no dial of the destination, and about
half of the time from the first byte to the close (docs/gateway-performance.md, "Time-to-block's tail").

Anything else is mitmproxy's as before: no sandbox, a destination no rule could allow (mitmproxy's sink reads its
first bytes), no bytes yet, a decision that is not a refusal (HTTP's are answered 403 there; report mode's
would-blocks are let through), and an error while judging (mitmproxy judges the same bytes again and fails closed
on the same error). The gate sees the client's bytes only, as when mitmproxy decides before the server spoke.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable

from egress.decide import Enforcement, network_rule_for
from egress.decisions import DecidedFlow
from egress.detect import tls
from egress.proxy.gate import HEAD_WAIT_LIMIT, Gate, Kind, flow_meta
from egress.proxy.peeked import peek_first_bytes

log = logging.getLogger(__name__)


def refusal(
    conn: socket.socket,
    peer: tuple[str, int],
    gate: Gate,
    destination: Callable[[socket.socket], tuple[str, int]],
) -> DecidedFlow | None:
    """The gate's block of ``conn``'s first bytes (peeked, up to the front's `HEAD_WAIT_LIMIT`, nothing
    consumed), as mitmproxy's addon would decide it; None when it is mitmproxy's to serve (module docstring)."""
    peeked = peek_first_bytes(conn, peer, gate, destination)
    if peeked is None or _hello_past_the_peek(peeked.data):
        return None
    sandbox, source, dst, data = peeked.sandbox, peeked.source, peeked.dst, peeked.data
    if gate.on_connect(sandbox, *dst).action is Enforcement.BLOCK:
        return None
    meta = flow_meta(source, dst)
    try:
        started = time.perf_counter()
        watching = network_rule_for(sandbox, meta.dst, meta.dport) is None
        decision = gate.on_first_bytes(sandbox, meta, data, b"", watching)
        decide_s = time.perf_counter() - started
    except Exception:  # mitmproxy judges the same bytes again, and fails closed on the same error
        log.exception("front: %s:%s: first bytes not judged here; handed to mitmproxy", source[0], source[1])
        return None
    verdict = decision.verdict
    if decision.kind is not Kind.REFUSE or verdict is None or verdict.action is not Enforcement.BLOCK:
        return None
    return DecidedFlow(time.time(), sandbox.name, *source, *dst, "tcp", decision.host, verdict, decide_s=decide_s)


def _hello_past_the_peek(data: bytes) -> bool:
    """A ClientHello bigger than the front peeks: mitmproxy judges it on all it reads (as `front._decided` leaves
    it), never on its first 16 KiB, where a name after padding is not."""
    return (
        len(data) >= HEAD_WAIT_LIMIT
        and tls.looks_like_tls(data)
        and not isinstance(tls.parse_client_hello(data), tls.ClientHello)
    )


def close_refused(conn: socket.socket) -> None:
    """Close a refused connection as mitmproxy's refusal does: what it sent read (up to `HEAD_WAIT_LIMIT`, what was
    judged) and dropped, then the end (a FIN; a reset if more is left unread). Nothing of it goes anywhere."""
    with contextlib.suppress(OSError):
        conn.recv(HEAD_WAIT_LIMIT)
    conn.close()
