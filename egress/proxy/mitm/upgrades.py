"""What follows a ``101``: mitmproxy's HTTP layer with our own choice of the layer after a protocol switch.

mitmproxy 12.3's ``HttpStream.flow_done`` puts its ``WebsocketLayer`` after a WebSocket ``101`` (and a raw
``TCPLayer`` after any other ``101`` when ``rawtcp`` is on). Its WebSocket layer relays ping and pong payloads
without an addon hook, so they would pass uninspected (up to 125 bytes each, as many as the client likes).
`EgressHttpLayer` tells the addon of a request head its client left unfinished (`Unfinished`), and makes its
streams `EgressHttpStream`s, whose WebSocket layer (`InspectedWebsocketLayer`) hands
every control payload to the addon first and closes both sides when the addon blocks it (or fails). After a
``101`` to another protocol the policy allows (``upgrades:``), the stream is the addon's `InspectLayer` (the
detectors, as for raw TCP); anything else after a ``101`` stays refused (the addon kills such flows, and the
workers run without ``rawtcp``).

Tied to mitmproxy 12.3's internals (pinned in pyproject.toml): ``HttpLayer.make_stream``, ``HttpStream.flow_done``
and ``WebsocketLayer.start``; tests/proxy/mitm/test_upgrades.py plays them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Iterator
from typing import Any

import wsproto.events
from mitmproxy import http
from mitmproxy.proxy import commands, events, layer
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers.http import HttpLayer, HTTPMode, HttpStream, SendHttp
from mitmproxy.proxy.layers.http._events import ResponseEndOfMessage
from mitmproxy.proxy.layers.http._http1 import Http1Server
from mitmproxy.proxy.layers.websocket import WebsocketConnection, WebsocketLayer

log = logging.getLogger("egress.proxy")

ControlCheck = Callable[[http.HTTPFlow, bytes, bool], bool]
"""(flow, ping or pong payload, from the client) → True when it is blocked (the connection is then closed)."""
RawAfter = Callable[[Context, http.HTTPFlow], layer.Layer | None]
"""The layer for the raw stream after a ``101`` to another protocol the policy allows (`InspectLayer`), or None
when it is not allowed (mitmproxy then closes the connection: the workers run without ``rawtcp``)."""
Unfinished = Callable[[Context, bytes], None]
"""Told the request head an HTTP/1 client left unfinished when its connection ended (judged, maybe recorded)."""
POLICY_VIOLATION = 1008
"""The close code sent to both sides when egress closes a WebSocket (RFC 6455 §7.4.1)."""


class InspectedWebsocketLayer(WebsocketLayer):
    """mitmproxy's WebSocket layer, with every ping and pong payload checked before it is relayed."""

    def __init__(self, context: Context, flow: http.HTTPFlow, check: ControlCheck) -> None:
        super().__init__(context, flow)
        self.check = check

    def start(self, event: events.Event) -> layer.CommandGenerator[None]:
        yield from super().start(event)  # mitmproxy's start (which expects ``Start``) makes the two connections
        self._guard(self.client_ws, True)
        self._guard(self.server_ws, False)

    _handle_event = start

    def _guard(self, ws: WebsocketConnection, from_client: bool) -> None:
        parsed = ws.events

        def checked() -> Iterator[wsproto.events.Event]:
            for event in parsed():
                if isinstance(event, wsproto.events.Ping | wsproto.events.Pong) and self._blocked(
                    bytes(event.payload), from_client
                ):
                    # mitmproxy's own close path: a close frame to both sides, then both connections closed
                    yield wsproto.events.CloseConnection(POLICY_VIOLATION, "egress: blocked")
                    return
                yield event

        ws.events = checked

    def _blocked(self, payload: bytes, from_client: bool) -> bool:
        try:
            return self.check(self.flow, payload, from_client)
        except Exception:
            log.exception("egress: inspecting a WebSocket control frame failed; the connection is closed")
            return True


class EgressHttpStream(HttpStream):
    """mitmproxy's HTTP stream; after a WebSocket ``101`` the child layer is an `InspectedWebsocketLayer`."""

    check: ControlCheck
    raw_after: RawAfter

    def flow_done(self) -> layer.CommandGenerator[None]:
        response = self.flow.response
        child: layer.Layer | None = None
        if response is not None and response.status_code == 101:
            if self.flow.websocket:
                child = InspectedWebsocketLayer(self.context, self.flow, self.check)
            else:
                child = self.raw_after(self.context, self.flow)
        if child is None:
            yield from super().flow_done()
            return
        # mitmproxy 12.3's flow_done for a 101, with our layer in place of its WebsocketLayer or TCPLayer
        self.flow.live = self.flow.websocket is not None
        self.child_layer = child
        self._handle_event = self.passthrough
        yield from self.child_layer.handle_event(events.Start())
        yield SendHttp(ResponseEndOfMessage(self.stream_id), self.context.client)


class EgressHttpLayer(HttpLayer):
    """mitmproxy's HTTP layer whose streams are `EgressHttpStream`s."""

    def __init__(
        self, context: Context, check: ControlCheck, raw_after: RawAfter, unfinished: Unfinished | None = None
    ) -> None:
        super().__init__(context, HTTPMode.transparent)
        self.check = check
        self.raw_after = raw_after
        self.unfinished = unfinished

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        # The client's end with a request head under way (mitmproxy's HTTP/1 reader holds it, never finished: no
        # blank line): told to `unfinished` before mitmproxy closes the connection with only a log line for it
        # (red team 16: Stratum's lines where the next header lines would be, then a reset, left no record).
        if self.unfinished is not None and isinstance(event, events.ConnectionClosed):
            held = self.unfinished_head() if event.connection is self.context.client else None
            if held is not None:
                self.unfinished(self.context, held)
        yield from super()._handle_event(event)

    def unfinished_head(self) -> bytes | None:
        """The client's request head under way in mitmproxy's HTTP/1 reader (never finished: no blank line yet),
        or None. ``wait``: a request whose answer is not out yet, the next (pipelined) one's head in the buffer."""
        held = self.connections.get(self.context.client)
        if isinstance(held, Http1Server) and held.state in (held.read_headers, held.wait) and held.buf:
            return bytes(held.buf)
        return None

    def make_stream(self, stream_id: int) -> Generator[commands.Command, Any, None]:
        stream = EgressHttpStream(self.context.fork(), stream_id)
        stream.check = self.check
        stream.raw_after = self.raw_after
        self.streams[stream_id] = stream
        yield from self.event_to_child(stream, events.Start())


STACK_DEPTH = 32
"""Layers followed from a connection's root looking for its HTTP layer (mitmproxy's stacks are a few deep)."""


def held_head(handler: object) -> bytes | None:
    """The request head a connection's client left unfinished in its `EgressHttpLayer` (`unfinished_head`), found
    from its mitmproxy ``ConnectionHandler`` (``handler``) down its layer stack (a ``NextLayer``'s ``layer``, a
    mode's or a tunnel's ``child_layer``), or None: no handler, no HTTP layer, no head under way."""
    node: object = getattr(handler, "layer", None)
    for _ in range(STACK_DEPTH):
        if node is None:
            return None
        if isinstance(node, EgressHttpLayer):
            return node.unfinished_head()
        node = node.layer if isinstance(node, layer.NextLayer) else getattr(node, "child_layer", None)
    return None
