"""Our two mitmproxy layers: `RefuseLayer` (closes both sides, forwards nothing) and `InspectLayer` (a TCP relay
through the detectors that closes both sides the moment a blocking finding is made).

mitmproxy 12.3's ``flow.kill()`` does not close raw TCP flows, so closing is done here, in the layer, before the
triggering bytes are forwarded.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any

from mitmproxy.proxy import commands, events, layer, layers
from mitmproxy.proxy.context import Context

from egress.decide import Enforcement, Verdict, decide_finding
from egress.detect.engine import FlowInspector
from egress.policy.model import Sandbox

CommandGenerator = Generator[commands.Command, Any, None]
OnVerdict = Callable[[Context, Sandbox, Verdict], None]
"""Called with each verdict a layer reaches (the addon reports it)."""


class RefuseLayer(layer.Layer):
    """Closes both sides at once and forwards nothing."""

    def _handle_event(self, event: events.Event) -> CommandGenerator:
        if self.context.server.connected:
            yield commands.CloseConnection(self.context.server)
        yield commands.CloseConnection(self.context.client)
        self._handle_event = self._done  # type: ignore[method-assign]

    def _done(self, event: events.Event) -> CommandGenerator:
        yield from ()


class InspectLayer(layers.TCPLayer):
    """A TCP relay through the detectors; a blocking finding closes both sides before the bytes are forwarded."""

    def __init__(self, context: Context, sandbox: Sandbox, inspector: FlowInspector, on_verdict: OnVerdict) -> None:
        super().__init__(context, ignore=True)
        self.sandbox = sandbox
        self.inspector = inspector
        self.on_verdict = on_verdict

    def relay_messages(self, event: events.Event) -> CommandGenerator:
        inspector = self.inspector
        if isinstance(event, events.DataReceived) and not inspector.done:
            from_client = event.connection == self.context.client
            before = inspector.finding
            finding = inspector.feed_stream(from_client, event.data)
            # Acted on once per finding: a crypto-node finding keeps the flow inspected, and a mining finding
            # that comes later replaces it (egress.detect.engine.RANK).
            if finding is not None and finding is not before:
                verdict = decide_finding(self.sandbox, finding)
                self.on_verdict(self.context, self.sandbox, verdict)
                if verdict.action is Enforcement.BLOCK:
                    if self.context.server.connected:
                        yield commands.CloseConnection(self.context.server)
                    yield commands.CloseConnection(self.context.client)
                    self._handle_event = self.done
                    return
        yield from super().relay_messages(event)
