"""HTTP/1.1 ``Upgrade`` (RFC 9110 §7.8): a connection that asks to switch, or switches, to a protocol other than a
WebSocket is a tunnel until shown otherwise.

After a ``101 Switching Protocols`` the connection carries whatever the two sides agreed on, byte for byte: h2c,
``rawtcp``, ``TLS/1.0`` or a name the attacker made up. Only a WebSocket has frames that egress reads
(`egress.detect.websocket`); anything else would be a raw channel past the HTTP detectors. The judgement is shared:
the proxy refuses such a request before forwarding it and kills such a ``101`` (`egress.proxy.mitm.flows`, where a
sandbox's ``upgrades:`` may allow named protocols), and the scanner reports the same flows (`detect`, with nothing
allowed: a capture has no policy).

Signature: a request head with an ``Upgrade`` field whose tokens are not only ``websocket`` on a ``GET``
(RFC 6455 §4.1), or a response ``101`` whose ``Upgrade`` is not ``websocket``. Every pipelined request head of the
client's stream is read, not only the first.
"""

from __future__ import annotations

from typing import Final

from egress.detect import http, jsonrpc
from egress.detect.base import MORE, Category, Finding, FlowView, Result, Transport, evidence

NAME: Final = "upgrade"
PROTOCOL: Final = "unknown-upgrade"
KNOWN: Final = frozenset({"websocket"})
"""Protocols a request may switch to: the ones whose messages egress parses and inspects."""


def tokens(value: str) -> frozenset[str]:
    """The protocol names of an ``Upgrade`` field (RFC 9110 §7.8), versions dropped, lowercased."""
    return frozenset(token.strip().split("/", 1)[0].lower() for token in value.split(","))


def refused(method: str, upgrade: str | None, allowed: tuple[str, ...] | frozenset[str] = ()) -> Finding | None:
    """A finding when a request asks to switch to a protocol that is neither a WebSocket (on a ``GET``) nor one in
    ``allowed`` (a sandbox's ``upgrades:``); None when it asks for nothing or for that."""
    if upgrade is None:
        return None
    asked = tokens(upgrade)
    if asked <= KNOWN and method == "GET":
        return None
    if asked <= KNOWN | frozenset(allowed) and "websocket" not in asked:
        return None
    return Finding(Category.TUNNEL, PROTOCOL, NAME, evidence(f"Upgrade: {upgrade}"))


def switched(upgrade: str) -> Finding:
    """The finding for a ``101`` that switches to ``upgrade`` where no such switch is allowed."""
    return Finding(Category.TUNNEL, PROTOCOL, NAME, evidence(f"101 switching to {upgrade!r}"))


def _asks(head: bytes) -> Finding | None:
    """The finding of one client head (request line and fields, without the blank line), if it asks to switch to
    a protocol it may not. Each longer prefix of a stream asks again about every head, so the common head is
    answered unparsed: one without the letters of ``upgrade`` in any case has no such field (field names are
    ASCII tokens, lowercased by the parser), and `refused` of no field is None."""
    if head.startswith(b"HTTP/") or head.lower().find(b"upgrade") < 0:
        return None
    message = http.parse_request(head + b"\r\n\r\n")
    if not isinstance(message, http.HttpRequest):
        return None
    return refused(message.method, message.headers.get("upgrade"))


def _switches(head: bytes) -> Finding | None:
    """The finding of one server head, if it is a ``101`` switching to anything but a WebSocket (a ``101`` with no
    ``Upgrade`` field too). Its status code sits between the first two spaces of the status line, so a head
    without ``" 101"`` is no ``101``."""
    if not head.startswith(b"HTTP/") or head.find(b" 101") < 0:
        return None
    message = http.parse_response(head + b"\r\n\r\n")
    if not isinstance(message, http.HttpResponse) or message.status != 101:
        return None
    upgrade = message.headers.get("upgrade", "")
    return None if tokens(upgrade) <= KNOWN else switched(upgrade)


def detect(view: FlowView) -> Result:
    """A TCP flow whose client asks to upgrade to a protocol other than a WebSocket, or whose server answers
    ``101`` switching to one. Undecided while the flow is HTTP and goes on: a later request may ask."""
    if view.meta.transport is not Transport.TCP:
        return None
    first = http.request_of(view)  # read once per flow: the memo keeps a whole head
    if first is None:
        return None
    if first is MORE:
        return None if view.complete else MORE
    for head in jsonrpc.read(view, True).heads:  # the heads the JSON-RPC detectors read of this prefix
        found = _asks(head)
        if found is not None:
            return found
    for head in jsonrpc.read(view, False).heads:
        found = _switches(head)
        if found is not None:
            return found
    return None if view.complete else MORE
