"""Our two mitmproxy layers: `RefuseLayer` (closes both sides, forwards nothing) and `InspectLayer` (a TCP relay
through the detectors that closes both sides the moment a blocking finding is made).

mitmproxy 12.3's ``flow.kill()`` does not close raw TCP flows, so closing is done here, in the layer, before the
triggering bytes are forwarded. An exception while inspecting closes both sides too (fail closed) and is reported
as a ``fail-closed`` verdict: the bytes that were being judged are never forwarded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator
from typing import Any

from mitmproxy.proxy import commands, events, layer, layers
from mitmproxy.proxy.context import Context

from egress.decide import Enforcement, Reason, Verdict, decide_finding, decide_suspicion
from egress.detect import http
from egress.detect.base import MORE, Category, Finding, evidence
from egress.detect.engine import UNIDENTIFIED, FlowInspector, unidentified_finding
from egress.detect.sshshape import SshShape
from egress.policy.model import Sandbox
from egress.proxy.holdback import HOLD_FOR, Holdback
from egress.proxy.upgraded import Upgraded

log = logging.getLogger("egress.proxy")

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


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""The HTTP/2 client connection preface (RFC 9113 §3.4)."""


def http_start(prefix: bytes) -> bool | None:
    """Whether a client stream starts as HTTP/1 or HTTP/2; None while too few bytes arrived to tell."""
    if prefix.startswith(H2_PREFACE) or http.looks_like_http_request(prefix):
        return True
    if len(prefix) < len(H2_PREFACE) and (H2_PREFACE.startswith(prefix) or http.parse_request(prefix) is MORE):
        return None
    return False


class InspectLayer(layers.TCPLayer):
    """A TCP relay through the detectors; a blocking finding closes both sides before the bytes are forwarded.

    ``guard_http``: the connection was handed here because the server spoke first, so the client's first bytes
    are held until they show whether they start an HTTP request; HTTP is refused here (it must go through the HTTP
    layer, which decodes bodies and checks Host: a server greeting must not be a way around that).

    ``strict``: the policy names the protocols this destination speaks (a network rule whose ``expect`` lacks
    ``any``, or a host rule's port: `Gate.strict`), so a stream the inspection cap leaves unidentified
    (`FlowInspector.unidentified`: padding, junk or a protocol no detector rules out) is blocked as
    ``tunnel``/``unidentified`` instead of relayed unjudged, unless ``exempt`` says the client's bytes so far pass
    (a stream that upgraded to TLS with a bound name: `Gate.bound_tls_in`).

    The client's bytes of a message the detectors are still waiting for are held back (`egress.proxy.holdback`):
    a mining message split into segments never reaches the server in part, since the detectors judge it whole
    before any of it is forwarded. Held bytes go out when the message closes, after `holdback.HOLD_FOR`, or when
    the client ends its side (after the detectors' last look at the flow, which then ends its inspection). Where
    ``strict``, a message whose time is up while the detectors are still undecided is not forwarded: the flow is
    judged unidentified (blocked as ``tunnel``), so no byte of a mining message reaches the pool however the
    miner paces it."""

    def __init__(
        self,
        context: Context,
        sandbox: Sandbox,
        inspector: FlowInspector,
        on_verdict: OnVerdict,
        guard_http: bool = False,
        strict: bool = False,
        clock: Callable[[], float] = time.monotonic,
        exempt: Callable[[bytes], bool] | None = None,
        watch: Upgraded | None = None,
    ) -> None:
        super().__init__(context, ignore=True)
        self.exempt = exempt
        self.watch = watch
        """Shown each chunk before it is forwarded (``passes``; False closes both sides, its finding reported by
        it): the TLS a stream to a host rule's port upgrades to (`egress.proxy.upgraded`). The client's bytes
        from its hello on are not held while they are TLS records (`Upgraded.client_records`)."""
        self.left_open = False
        """A held message was judged for being left open (once: report mode lets it through)."""
        self.clock = clock
        self.holdback = Holdback()
        self.waking = False
        """A wakeup is asked for (one at a time: when it comes it asks again for what is left)."""
        self.strict = strict
        self.sandbox = sandbox
        self.inspector = inspector
        self.on_verdict = on_verdict
        self.held: bytes | None = b"" if guard_http else None
        """The client's first bytes while it is not yet known whether they start HTTP (``guard_http``)."""
        self.shape = SshShape()
        """Watches an SSH connection's encrypted shape for port forwarding (`egress.detect.sshshape`): a suspicion,
        recorded, never blocked; it stops by itself on anything that is not SSH."""

    def relay_messages(self, event: events.Event) -> CommandGenerator:
        if self.held is not None and isinstance(event, events.DataReceived) and event.connection == self.context.client:
            held = self.held + event.data
            started = http_start(held)
            if started is None:
                self.held = held
                return
            self.held = None
            if started:
                finding = Finding(Category.TUNNEL, "http-after-greeting", "proxy", evidence(held[:80]))
                yield from self._judged(decide_finding(self.sandbox, finding))
                if self._handle_event == self.done:
                    return
            event = events.DataReceived(self.context.client, held)
        yield from self._inspected(event)

    def _judged(self, verdict: Verdict) -> CommandGenerator:
        self.on_verdict(self.context, self.sandbox, verdict)
        if verdict.action is Enforcement.BLOCK:
            if self.context.server.connected:
                yield commands.CloseConnection(self.context.server)
            yield commands.CloseConnection(self.context.client)
            self._handle_event = self.done

    def _inspected(self, event: events.Event) -> CommandGenerator:
        if isinstance(event, events.Wakeup):
            self.waking = False
            yield from self._held_out(due_only=True)
            return
        inspector = self.inspector
        from_client = isinstance(event, events.ConnectionEvent) and event.connection == self.context.client
        verdict: Verdict | None = None
        if isinstance(event, events.DataReceived) and not inspector.done:
            data = event.data
            verdict = self._judge(lambda: inspector.feed_stream(from_client, data))
        elif isinstance(event, events.ConnectionClosed) and from_client and self.holdback.held:
            # The client ended its side inside a held message: the detectors' last look (a trailing partial
            # message counts), then what they passed goes out before the close.
            verdict = self._judge(inspector.close)
        if verdict is None and isinstance(event, events.DataReceived) and not self.shape.done:
            shape, data = self.shape, event.data
            verdict = self._judge(lambda: shape.feed(from_client, data, self.clock()), suspected=True)
        if verdict is not None:
            yield from self._judged(verdict)
            if verdict.action is Enforcement.BLOCK:
                return
        watch = self.watch
        if isinstance(event, events.DataReceived) and watch is not None and not watch.passes(from_client, event.data):
            if self.context.server.connected:
                yield commands.CloseConnection(self.context.server)
            yield commands.CloseConnection(self.context.client)
            self._handle_event = self.done
            return
        if isinstance(event, events.DataReceived) and from_client:
            deciding = not inspector.done and not (watch is not None and watch.client_records)
            data = self.holdback.feed(event.data, self.clock(), deciding=deciding)
            yield from self._held_out(due_only=True)
            if not data:
                return
            event = events.DataReceived(event.connection, data)
        elif isinstance(event, events.ConnectionClosed) and from_client:
            yield from self._held_out(due_only=False)
        yield from super().relay_messages(event)

    def _judge(self, feed: Callable[[], Finding | None], suspected: bool = False) -> Verdict | None:
        """Feed the detectors; the verdict on a fresh finding (or an unidentified flow, ``strict``), if any.
        ``suspected``: ``feed`` is the SSH shape watcher, whose finding is only recorded (`decide_suspicion`)."""
        inspector = self.inspector
        before = inspector.finding
        try:
            if suspected:
                watched = feed()
                return decide_suspicion(self.sandbox, watched) if watched is not None else None
            finding = feed()
            # Acted on once per finding: a crypto-node finding keeps the flow inspected, and a mining finding
            # that comes later replaces it (egress.detect.engine.RANK).
            fresh = finding is not None and finding is not before
            verdict = decide_finding(self.sandbox, finding) if finding is not None and fresh else None
            if verdict is None and self.strict and inspector.unidentified and not self._exempt():
                verdict = decide_finding(self.sandbox, unidentified_finding(inspector))
        except Exception as exc:
            log.exception("egress: inspection failed; the connection is closed")
            verdict = fail_closed_verdict(f"inspect: {exc!r}")
        return verdict

    def _exempt(self) -> bool:
        return self.exempt is not None and self.exempt(self.inspector.view.client)

    def _held_out(self, due_only: bool) -> CommandGenerator:
        """Forward the held client bytes if their time is up (or at once), else ask to be woken when it is."""
        wait = self.holdback.due(self.clock())
        if wait is None:
            return
        if wait > 0 and due_only:
            if not self.waking:
                self.waking = True
                yield commands.RequestWakeup(wait)
            return
        if due_only and self.strict and not self.inspector.done and not self.left_open:
            # The message these bytes open stopped growing before the detectors could judge it: where the policy
            # names what the destination speaks, it is judged unidentified rather than forwarded in part (issue 9:
            # a miner that pauses inside its login got all of it but the closing brace to the pool).
            self.left_open = True
            text = f"a message left open {HOLD_FOR:g} s, undecided; held {self.holdback.held[:24].hex()}"
            verdict = decide_finding(self.sandbox, Finding(Category.TUNNEL, UNIDENTIFIED, "proxy", evidence(text)))
            yield from self._judged(verdict)
            if verdict.action is Enforcement.BLOCK:
                return
        held = self.holdback.release()
        if self.context.server.connected:
            yield commands.SendData(self.context.server, held)

    def done(self, _: events.Event) -> CommandGenerator:
        yield from ()  # also a wakeup asked for before the layer closed


FAIL_CLOSED = "fail-closed"
"""The rule label of a verdict made because inspection itself failed (an exception in a hook or a layer)."""


def fail_closed_verdict(why: str) -> Verdict:
    """Block what could not be inspected because inspection failed: always a block, in report mode too, since the
    failure is egress's and says nothing about what the traffic is."""
    finding = Finding(Category.TUNNEL, "inspection-error", "proxy", evidence(why))
    return Verdict(Enforcement.BLOCK, Reason.TUNNEL, FAIL_CLOSED, evidence(f"inspection-error: {why}"), finding)
