"""The addon: `egress.proxy.gate` decisions mapped onto mitmproxy's layers and HTTP hooks, every decision reported.

`EgressAddon` replaces mitmproxy's ``next_layer`` addon (subclassing it, so TLS interception and HTTP keep
mitmproxy's own layering) and maps decisions onto layers:

- passthrough TLS (what the front could not judge: a hello after its wait, or bigger than its peek): a host
  rule's → `InspectLayer` with the front's shape watch from its hello on (`egress.proxy.upgraded`: mining told
  from the shape, SSH inside TLS), as the front would have relayed it (refusing it instead, as before, cut off
  every client that a loaded machine slowed past the front's wait); a network rule's → ``TCPLayer(ignore=True)``,
  unwatched, only where its rule asks no watch (else refused as ``tunnel``/``tls-unwatched`` by
  `egress.proxy.gate`; in report mode recorded as a would-block);
- inspected TCP → `InspectLayer` (detectors on both directions; a blocking finding closes both sides);
- refused → `RefuseLayer`, which closes both sides without forwarding a byte;
- HTTP → mitmproxy's HTTP layer (`egress.proxy.mitm.upgrades.EgressHttpLayer`: WebSocket control frames are
  inspected too), with a 403 whose ``X-Egress-Blocked`` header and body say why; bodies, upgrades and WebSocket
  messages are judged by `egress.proxy.mitm.flows`.

Inside intercepted TLS the decrypted bytes are judged again (`_inside_tls`): HTTP goes to mitmproxy's HTTP layer,
TLS inside TLS is refused as a tunnel, an HTTP/2 preface without ALPN ``h2`` as ``h2c-not-inspected`` (HTTP/2
with prior knowledge, which mitmproxy would read as an HTTP/1 ``PRI *`` request), anything else is an
`InspectLayer`, the same detectors as plaintext TCP: nothing egress decrypts is relayed raw.

Every refusal is recorded: a request mitmproxy's framing refused before it was whole (the ``error`` hook), an
HTTP/2 connection it refused before any stream became a flow (`refused`, told by `egress.proxy.mitm.quiet`), and a
connection closed by the idle timeout (`idle_closed`, the same watch).

The gateway dials out eagerly (server-first protocols need it), so `server_connect` first checks that some rule
could allow the destination address at all: a direct-IP connection is never dialled. That check is the
connection's first decision, and it is recorded whatever comes after: in report mode the would-block it reaches
is kept, and reported when the connection ends with nothing recorded (the destination refused or reset it, or
closed before a byte: no layer was ever chosen), exactly once per connection.

For a sandbox that keeps a flow log (`egress.flowlog`), a connection on which something was let through is
described when its client disconnects, with the bytes the worker's handoff counted on the client side
(`meters`); one cut by a block, or whose requests were all refused, is not.

Fail closed: every hook runs guarded. An exception in one (a parser or decoder on attacker bytes, or a bug)
blocks or closes what it was judging and is recorded (`egress.proxy.mitm.layers.fail_closed_verdict`); mitmproxy itself
would log the error and carry on, forwarding what the hook had not judged.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from mitmproxy import connection, http
from mitmproxy.addons.next_layer import NeedsMoreData, NextLayer, stack_match
from mitmproxy.net.http import url
from mitmproxy.proxy import layer, layers
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers import modes
from mitmproxy.proxy.layers.tls import HTTP_ALPNS
from mitmproxy.proxy.server_hooks import ServerConnectionHookData

from egress.decide import (
    Enforcement,
    Verdict,
    decide_authority_port,
    decide_finding,
    decide_idle_timeout,
    decide_watched,
    network_rule_for,
)
from egress.decisions import DecidedFlow, Reporter
from egress.detect import tls
from egress.detect.base import Category, Finding, FlowMeta, Transport, evidence
from egress.flowlog import EndedFlow, FlowSink, Meter
from egress.policy.model import Sandbox
from egress.proxy.authority import port_differs, split_host_port, stream_disagreement, target_authorities
from egress.proxy.gate import Decision, Gate, Kind
from egress.proxy.mitm.flows import (
    FlowHooks,
    Sever,
    answer_blocked,
    flow_meta,
    mark_judged,
    note_record,
    protocol_refusal,
    unforwarded_error,
)
from egress.proxy.mitm.inspect import unidentified
from egress.proxy.mitm.layers import H2_PREFACE, InspectLayer, RefuseLayer, http_start
from egress.proxy.mitm.layers import fail_closed_verdict as fail_closed
from egress.proxy.mitm.quiet import QuietWatch
from egress.proxy.mitm.upgrades import EgressHttpLayer, held_head
from egress.proxy.openflows import OpenFlows
from egress.proxy.upgraded import Upgraded, host_rule_watch
from egress.record.naming import named
from egress.replay import Kind as Asked
from egress.replay import Question

log = logging.getLogger("egress.proxy")

H2C_NOT_INSPECTED: Final = "h2c-not-inspected"
"""The label of HTTP/2 with prior knowledge refused as uninspected: the gate's for clear text
(`egress.proxy.gate`), the addon's for a preface inside intercepted TLS that did not negotiate ALPN ``h2``."""

UNFINISHED_END: Final = "the client closed or reset the connection"
"""How an unfinished head mitmproxy held ended, in its record's evidence (a reset reaches mitmproxy as an end)."""

_ASKED = {Kind.PASSTHROUGH: Asked.TLS, Kind.INTERCEPT: Asked.TLS, Kind.HTTP: Asked.HTTP, Kind.INSPECT: Asked.RAW}
"""The question a connection let through was decided on, by the gate's decision (`Gate.on_first_bytes`)."""


def _meta(context: Context) -> FlowMeta:
    src = context.client.peername
    dst = context.server.address or ("", 0)
    return FlowMeta(Transport.TCP, str(src[0]), int(src[1]), str(dst[0]), int(dst[1]))


@dataclass(slots=True)
class _Connection:
    sandbox: Sandbox
    decision: Decision | None = None
    preblocked: Verdict | None = None
    """Set when no rule could allow the destination address: the connection was sent to the sink instead."""
    destination: tuple[str, int] = ("", 0)
    recorded: bool = False
    """A block or would-block was reported for it (else a preblocked connection is reported when it closes)."""
    noted: Verdict | None = None
    """Report mode: the would-block of `Gate.on_connect`; reported when the connection closes unrecorded."""
    noted_at: float = 0.0
    """When it was decided (epoch seconds): the record's time."""
    open_token: int = 0
    """Its token in the worker's `OpenFlows` (0: not tracked)."""
    passed: Verdict | None = None
    """The first verdict that let it (or a request on it) through, and the name it was for: its flow log entry."""
    passed_host: str = ""
    cut: bool = False
    """A block ended it (not an HTTP request answered 403 on it): an attempt, not a flow log entry."""
    severed: bool = False
    """Closed whole by egress with its own record (mitmproxy crashed on it, a protocol refusal, the idle timeout):
    the flows open on it then end in mitmproxy's ``error`` hook, and are not recorded again."""
    pending: bytes = b""
    """The client's bytes while the gate waits for more to decide (no layer chosen yet): judged if the client ends
    there, an HTTP request head never finished (`Gate.on_unfinished_head`)."""
    http_seen: bool = False
    """Its first HTTP request reached `EgressAddon.requestheaders` (the one the gate's `Kind.HTTP` decision judged):
    every later one is judged by `Gate.on_request`. Kept here, not in ``flow.metadata``, which mitmproxy makes anew
    for each request (red team 8: every request then counted as the first and got the connection's decision)."""


class EgressAddon(NextLayer):
    """Replaces mitmproxy's ``nextlayer`` addon; see the module docstring."""

    def __init__(
        self,
        gate: Gate,
        reporter: Reporter,
        sink: tuple[str, int],
        sever: Sever,
        open_flows: OpenFlows | None = None,
        flows: FlowSink | None = None,
        quiet: tuple[QuietWatch, Callable[[connection.Client], object]] | None = None,
    ) -> None:
        super().__init__()
        self.quiet = quiet
        """The idle timeout's watch (`egress.proxy.mitm.quiet`) and how to find a client's mitmproxy handler."""
        self.open_flows = open_flows
        self.flow_sink = flows
        """Told each connection let through when it ends (`egress.flowlog`), for sandboxes that keep a flow log."""
        self.meters: dict[tuple[str, int], Meter] = {}
        """The bytes of each open client connection by its peer address (the worker's handoff counts them)."""
        """Where connections let through are kept while open (a reload may close them, `egress.proxy.openflows`)."""
        self.gate = gate
        self.reporter = reporter
        self.sink = sink
        """A local listener that takes connections to destinations no rule allows (see `server_connect`)."""
        self.connections: dict[str, _Connection] = {}
        self.sever = sever
        """Closes both sides of a live connection (mitmproxy 12 cannot kill a flow in transit)."""
        self.flows = FlowHooks(gate, self.record_flow, sever)

    # -- reporting -------------------------------------------------------------------------------------------
    def _report(
        self,
        meta: FlowMeta,
        sandbox: Sandbox | None,
        verdict: Verdict,
        host: str,
        client_id: str,
        decide_s: float | None = None,
    ) -> str:
        """Report a decision; the id of its record (named now, so a 403 can name it), ``""`` for an allowed one."""
        state = self.connections.get(client_id)
        if state is not None:
            state.recorded = state.recorded or verdict.recorded
            _note_passage(state, verdict, host)
            if state.preblocked is not None:
                meta = FlowMeta(meta.transport, meta.src, meta.sport, *state.destination)
        name = sandbox.name if sandbox is not None else ""
        decided = DecidedFlow(
            time.time(), name, meta.src, meta.sport, meta.dst, meta.dport, "tcp", host, verdict, decide_s=decide_s
        )
        decided = named(decided)
        self.reporter.report(decided)
        return decided.record_id

    def record(
        self, context: Context, sandbox: Sandbox | None, verdict: Verdict, host: str, decide_s: float | None = None
    ) -> None:
        """Report a decision on a connection (the layers' `OnVerdict`); ``decide_s``: how long the gate took."""
        self._report(_meta(context), sandbox, verdict, host, context.client.id, decide_s)

    def record_flow(self, flow: http.HTTPFlow, sandbox: Sandbox | None, verdict: Verdict) -> None:
        """Report a decision on one HTTP request (its record's id kept for the 403 that may answer it)."""
        record_id = self._report(flow_meta(flow), sandbox, verdict, flow.request.pretty_host, flow.client_conn.id)
        note_record(flow, record_id)

    def _on_verdict(self, context: Context, sandbox: Sandbox, verdict: Verdict) -> None:
        self.record(context, sandbox, verdict, "")

    def _sandbox(self, client_id: str) -> Sandbox | None:
        state = self.connections.get(client_id)
        return state.sandbox if state is not None else None

    def crashed(self, client: connection.Client, why: str) -> None:
        """mitmproxy itself failed on this connection (`egress.proxy.mitm.crashes`): close it, record the block."""
        state = self.connections.get(client.id)
        source = (str(client.peername[0]), int(client.peername[1]))
        host, port = state.destination if state is not None else ("", 0)
        self._report(
            FlowMeta(Transport.TCP, *source, host, port), self._sandbox(client.id), fail_closed(why), "", client.id
        )
        if state is not None:
            state.severed = True
        self.sever(client)

    def idle_closed(self, client: connection.Client, quiet_s: float, note: str) -> None:
        """The idle timeout's watch found ``client``'s connection without progress: record the close, then close
        both sides (`egress.proxy.mitm.quiet`)."""
        state = self.connections.get(client.id)
        if state is None:
            return
        source = (str(client.peername[0]), int(client.peername[1]))
        host = state.decision.host if state.decision is not None else ""
        meta = FlowMeta(Transport.TCP, *source, *state.destination)
        found = self._abandoned_head(client, state, meta, quiet_s)
        if found is not None:
            self._report(meta, state.sandbox, found, host, client.id)
        if found is None or found.action is not Enforcement.BLOCK:  # report mode: the close is recorded too
            self._report(meta, state.sandbox, decide_idle_timeout(quiet_s, note), host, client.id)
        state.severed = True
        self.sever(client)

    def _abandoned_head(
        self, client: connection.Client, state: _Connection, meta: FlowMeta, quiet_s: float
    ) -> Verdict | None:
        """The verdict on an HTTP request head ``client`` left unfinished and then went silent on, when it
        carries a pool's lines (red team 17: the idle timeout closed it as ``idle-timeout``, unjudged, where a
        reset or a close was judged): the head the gate waited on (no layer chosen), or the one mitmproxy's HTTP
        layer holds. None: no such head, or nothing of a pool's in it. An error judging it is a block recorded."""
        head = state.pending if state.decision is None else b""
        ended = f"the client went silent; closed by the idle timeout after {quiet_s:.0f} s"
        try:
            if not head and self.quiet is not None:
                head = held_head(self.quiet[1](client)) or b""
            if not head:
                return None
            verdict = self.gate.on_unfinished_head(state.sandbox, meta, head, ended)
        except Exception as exc:
            log.exception("egress: judging an abandoned HTTP head failed; recorded as blocked")
            return fail_closed(f"an abandoned HTTP head's {len(head)} bytes: {exc!r}")
        return verdict if verdict is not None and verdict.recorded else None

    def refused(self, client: connection.Client, why: str) -> None:
        """mitmproxy refused the client's connection before any request of it became a flow (an HTTP/2 protocol
        error, an HTTP/1 head it cannot parse: `egress.proxy.mitm.quiet.REFUSALS`): record the block (mitmproxy
        closes the connection)."""
        state = self.connections.get(client.id)
        if state is None:
            return
        source = (str(client.peername[0]), int(client.peername[1]))
        host = state.decision.host if state.decision is not None else ""
        meta = FlowMeta(Transport.TCP, *source, *state.destination)
        state.severed = True
        self._report(meta, state.sandbox, protocol_refusal(f"connection to {host or meta.dst}: {why}"), host, client.id)

    # -- connection hooks ------------------------------------------------------------------------------------
    def client_connected(self, client: connection.Client) -> None:
        try:
            self._client_connected(client)
        except Exception as exc:
            log.exception("egress: client_connected failed; connection refused")
            client.error = f"egress: {exc!r}"

    def _client_connected(self, client: connection.Client) -> None:
        source = str(client.peername[0])
        sandbox = self.gate.sandbox(source)
        if sandbox is None:
            verdict = self.gate.on_client(source)
            if verdict is not None:
                self.reporter.report(
                    DecidedFlow(time.time(), "", source, int(client.peername[1]), "", 0, "tcp", "", verdict)
                )
            client.error = "egress: source outside every sandbox"
            return
        self.connections[client.id] = _Connection(sandbox)
        if self.quiet is not None:
            watch, handler_of = self.quiet
            handler = handler_of(client)
            if handler is not None:
                watch.watch(client, handler)

    def client_disconnected(self, client: connection.Client) -> None:
        if self.quiet is not None:
            self.quiet[0].forget(client)
        state = self.connections.pop(client.id, None)
        if state is not None and state.open_token and self.open_flows is not None:
            self.open_flows.discard(state.open_token)
        if state is not None and state.sandbox.flow_log and self.flow_sink is not None:
            self._log_end(client, state)
        if state is not None and state.decision is None and state.pending and not state.recorded:
            self._unfinished(client, state)
        if state is None or state.recorded:
            return
        verdict, ts = (state.preblocked, time.time()) if state.preblocked is not None else (state.noted, state.noted_at)
        if verdict is not None:
            host, port = state.destination
            source = (str(client.peername[0]), int(client.peername[1]))
            self.reporter.report(DecidedFlow(ts, state.sandbox.name, *source, host, port, "tcp", "", verdict))

    def _unfinished(self, client: connection.Client, state: _Connection) -> None:
        """A client gone before a layer was chosen for it (the gate waited for more), what it sent an HTTP request
        head never finished: recorded when it carries a pool's lines (red team 16; the front's last look judges
        a client that reset before the handoff the same way). An error judging them is a block recorded."""
        source = (str(client.peername[0]), int(client.peername[1]))
        meta = FlowMeta(Transport.TCP, *source, *state.destination)
        try:
            verdict = self.gate.on_unfinished_head(state.sandbox, meta, state.pending, UNFINISHED_END)
        except Exception as exc:
            log.exception("egress: judging an unfinished HTTP head failed; recorded as blocked")
            verdict = fail_closed(f"an unfinished HTTP head's {len(state.pending)} bytes: {exc!r}")
        if verdict is None or not verdict.recorded:
            return
        state.recorded = True
        self.reporter.report(named(DecidedFlow(time.time(), state.sandbox.name, *source, *state.destination, "tcp",
                                               "", verdict)))  # fmt: skip

    def _unfinished_in_http(self, context: Context, head: bytes) -> None:
        """The HTTP layer's client ended with a request head never finished (`EgressHttpLayer`: a later request
        of a kept-alive connection, or one inside intercepted TLS): recorded when it carries a pool's lines. An
        error judging them is a block recorded."""
        state = self.connections.get(context.client.id)
        if state is None or state.severed:  # closed by egress with its record (the idle timeout judged the head)
            return
        host = state.decision.host if state.decision is not None else ""
        try:
            verdict = self.gate.on_unfinished_head(state.sandbox, _meta(context), head, UNFINISHED_END)
        except Exception as exc:
            log.exception("egress: judging an unfinished HTTP head failed; recorded as blocked")
            verdict = fail_closed(f"an unfinished HTTP head's {len(head)} bytes: {exc!r}")
        if verdict is not None and verdict.recorded:
            self.record(context, state.sandbox, verdict, host)

    def _log_end(self, client: connection.Client, state: _Connection) -> None:
        """Tell the flow log of a connection let through, with the bytes its client side carried."""
        passed = state.passed
        if passed is None or state.cut or state.preblocked is not None or self.flow_sink is None:
            return
        source = (str(client.peername[0]), int(client.peername[1]))
        meter = self.meters.get(source)
        if meter is None:  # not handed off by the front (a test's own stream): nothing was counted
            return
        host = state.passed_host or (state.decision.host if state.decision is not None else "")
        ended = EndedFlow(state.sandbox.name, *source, *state.destination, "tcp", host, passed.rule,
                          passed.action.value, meter.up, meter.down, meter.started, time.time())  # fmt: skip
        self.flow_sink.flow_ended(ended)

    def server_connect(self, data: ServerConnectionHookData) -> None:
        try:
            self._server_connect(data)
        except Exception as exc:
            log.exception("egress: server_connect failed; not dialled")
            data.server.error = f"egress: {exc!r}"

    def _server_connect(self, data: ServerConnectionHookData) -> None:
        state = self.connections.get(data.client.id)
        if state is None or data.server.address is None:
            data.server.error = "egress: no sandbox"
            return
        if state.decision is not None or state.preblocked is not None:
            if self.gate.this_host(str(data.server.address[0]), self.gate.own()):  # never this host (red team 10b)
                data.server.error = "egress: the gateway itself is never dialled"
            return  # a later dial of an already judged connection (HTTP keep-alive to the same host)
        host, port = str(data.server.address[0]), int(data.server.address[1])
        state.destination = (host, port)
        verdict = self.gate.on_connect(state.sandbox, host, port)
        if verdict.action is Enforcement.BLOCK:
            # Never dial a destination no rule allows. The connection goes to a local sink instead, so the first
            # bytes can still be read (an HTTP client gets a 403 saying why, a TLS client's SNI is recorded).
            state.preblocked = verdict
            data.server.address = self.sink
        elif verdict.recorded:  # report mode: dialled, and recorded even if the dial fails or nothing comes back
            state.noted, state.noted_at = verdict, time.time()

    def server_connect_error(self, data: ServerConnectionHookData) -> None:
        try:
            self._server_connect_error(data)
        except Exception:
            log.exception("egress: server_connect_error failed")

    def _server_connect_error(self, data: ServerConnectionHookData) -> None:
        """A dial that mitmproxy saw fail with a reset (``ECONNRESET``): the destination accepted, may have sent
        its answer, and reset before the connect was seen complete (red team 16: a pool that pushes its job as it
        accepts and resets at once). mitmproxy closes the socket unread and the connection with it, so what it sent
        is judged by no detector: recorded as a block that inspection could not make (fail closed), once. A
        refused or unreachable destination (nothing was sent) is not."""
        state = self.connections.get(data.client.id)
        reset = f"[Errno {errno.ECONNRESET}]" in (data.server.error or "")
        if state is None or state.recorded or state.preblocked is not None or not reset:
            return
        host, port = state.destination
        source = (str(data.client.peername[0]), int(data.client.peername[1]))
        why = f"{host}:{port} reset the connection as it opened; what it sent could not be read"
        self._report(FlowMeta(Transport.TCP, *source, host, port), state.sandbox, fail_closed(why), "", data.client.id)

    # -- layer choice ----------------------------------------------------------------------------------------
    def next_layer(self, nextlayer: layer.NextLayer) -> None:
        if nextlayer.layer:
            return
        context = nextlayer.context
        try:
            nextlayer.layer = self._next_layer(context, nextlayer.data_client(), nextlayer.data_server())
        except NeedsMoreData:
            pass
        except Exception as exc:
            log.exception("egress: choosing a layer failed; connection refused")
            self.record(context, self._sandbox(context.client.id), fail_closed(f"next_layer: {exc!r}"), "")
            nextlayer.layer = RefuseLayer(context)

    def _next_layer(self, context: Context, data_client: bytes, data_server: bytes) -> layer.Layer | None:
        if not stack_match(context, [modes.TransparentProxy]):
            return self._inside_tls(context, data_client, data_server)
        state = self.connections.get(context.client.id)
        if state is None:
            return RefuseLayer(context)
        meta = _meta(context)
        if state.preblocked is not None:
            meta = FlowMeta(meta.transport, meta.src, meta.sport, *state.destination)
            data_server = b""  # the sink's silence, not the destination's
        started = time.perf_counter()
        decision = self._decide(state, meta, data_client, data_server)  # NeedsMoreData: timed on the final call
        decide_s = time.perf_counter() - started
        state.decision = decision
        decided = decision.verdict or decision.allow
        if decided is not None and decision.kind is not Kind.HTTP:  # HTTP is reported request by request
            self.record(context, state.sandbox, decided, decision.host, decide_s)
        self._keep(context, state, meta, decision)
        match decision.kind:
            case Kind.PASSTHROUGH if network_rule_for(state.sandbox, meta.dst, meta.dport) is not None:
                return layers.TCPLayer(context, ignore=True)  # what the rule's `expect`/`tls` lets through unwatched
            case Kind.PASSTHROUGH | Kind.INSPECT:  # a host rule's TLS: watched as the front watches it (`_decide`)
                sandbox, gate = state.sandbox, self.gate
                return InspectLayer(
                    context,
                    sandbox,
                    gate.inspector(meta),
                    self._on_verdict,
                    guard_http=not data_client,
                    strict=gate.strict(sandbox, meta),
                    exempt=lambda client: gate.bound_tls_in(sandbox, meta, client),
                    watch=self._upgraded(context, sandbox, meta),
                )
            case Kind.INTERCEPT:
                return super()._next_layer(context, data_client, data_server)
            case Kind.HTTP:
                return EgressHttpLayer(context, self._control, self._raw_after, self._unfinished_in_http)
        return RefuseLayer(context)

    def _upgraded(self, context: Context, sandbox: Sandbox, meta: FlowMeta) -> Upgraded | None:
        """The shape watch on the TLS an inspected stream to a host rule's port may upgrade to (STARTTLS, or a
        hello after a server's banner: `egress.proxy.upgraded`); a network rule's gets none (TLS after its
        opening is never exempt from the unidentified verdict there)."""
        if network_rule_for(sandbox, meta.dst, meta.dport) is not None:
            return None

        def on_finding(finding: Finding) -> bool:
            verdict = decide_watched(sandbox, finding)
            hello = tls.parse_client_hello(upgraded.hello, partial=True)
            self.record(context, sandbox, verdict, hello.sni or "" if isinstance(hello, tls.ClientHello) else "")
            return verdict.action is Enforcement.BLOCK

        def unbound(client: bytes) -> bool | None:  # an unbound name is judged at its hello, as the front does
            decision = gate.unbound_hello(sandbox, meta, client)
            if decision is not None and decision.verdict is not None:
                self.record(context, sandbox, decision.verdict, decision.host)
            return None if decision is None else decision.kind is Kind.REFUSE

        gate = self.gate
        watch = host_rule_watch(sandbox, on_finding)
        upgraded = Upgraded(watch, lambda c: gate.bound_hello_at(sandbox, meta, c), unbound=unbound)
        return upgraded

    def _keep(self, context: Context, state: _Connection, meta: FlowMeta, decision: Decision) -> None:
        """Track a connection let through, as the question it was decided on (`egress.proxy.openflows`)."""
        asked = _ASKED.get(decision.kind)
        if self.open_flows is None or asked is None or state.preblocked is not None or state.open_token:
            return
        if decision.verdict is not None and decision.verdict.action is Enforcement.BLOCK:
            return
        name = decision.host or None if asked is not Asked.RAW else None
        client = context.client
        question = Question(asked, meta.src, meta.dst, meta.dport, name)
        state.open_token = self.open_flows.add(question, lambda: self.sever(client))

    def _inside_tls(self, context: Context, data_client: bytes, data_server: bytes) -> layer.Layer | None:
        """The layer for the bytes inside intercepted TLS (only ever reached for a decrypted connection): HTTP to
        the HTTP layer, TLS refused, anything else through the detectors. HTTP clients speak first, so with an
        HTTP ALPN the client's bytes are awaited even when the server spoke first (an HTTP/2 server's SETTINGS)."""
        state = self.connections.get(context.client.id)
        if state is None or state.decision is None or state.decision.kind is not Kind.INTERCEPT:
            return RefuseLayer(context)
        http_alpn = context.client.alpn in HTTP_ALPNS
        if not data_client and (http_alpn or not data_server):
            raise NeedsMoreData
        meta = _meta(context)
        if not data_client:  # a server-first protocol; its client must not then speak HTTP past the HTTP layer
            return InspectLayer(context, state.sandbox, self.gate.inspector(meta), self._on_verdict, guard_http=True)
        if tls.looks_like_tls(data_client):
            finding = unidentified("TLS inside intercepted TLS", "tls-in-tls")
            verdict = decide_finding(state.sandbox, finding)
            self.record(context, state.sandbox, verdict, state.decision.host)
            if verdict.action is Enforcement.BLOCK:
                return RefuseLayer(context)
        if context.client.alpn != b"h2" and _h2_preface(data_client):
            # HTTP/2 with prior knowledge inside the TLS (no ALPN h2): mitmproxy would read it as HTTP/1 (a `PRI *`
            # request without Host, refused as fronting) and never decode its frames; refused as the gate refuses
            # h2c, by what it is.
            if len(data_client) < len(H2_PREFACE) and H2_PREFACE.startswith(data_client):
                raise NeedsMoreData
            verdict = decide_finding(state.sandbox, _h2_without_alpn(context, meta))
            self.record(context, state.sandbox, verdict, state.decision.host)
            if verdict.action is Enforcement.BLOCK:
                return RefuseLayer(context)
        started = http_start(data_client)
        if started is None:
            raise NeedsMoreData
        if started:
            return EgressHttpLayer(context, self._control, self._raw_after, self._unfinished_in_http)
        return InspectLayer(context, state.sandbox, self.gate.inspector(meta), self._on_verdict)

    def _decide(self, state: _Connection, meta: FlowMeta, data_client: bytes, data_server: bytes) -> Decision:
        """The gate's decision. A host rule's TLS that reaches mitmproxy (its client was silent past the front's
        wait, or its hello is bigger than the front peeks) is relayed through an `InspectLayer` with the front's
        shape watch (`_upgraded`: from the hello, which is its first byte here), so the gate is told it is watched;
        a network rule's is not (the gate refuses it unless the rule lets it through unwatched)."""
        watching = network_rule_for(state.sandbox, meta.dst, meta.dport) is None
        decision = self.gate.on_first_bytes(state.sandbox, meta, data_client, data_server, watching)
        if decision.kind is Kind.WAIT:
            state.pending = data_client
            raise NeedsMoreData
        if state.preblocked is not None and (
            decision.verdict is None or decision.verdict.action is not Enforcement.BLOCK
        ):  # whatever the bytes say, the destination is one no rule allows
            kind = Kind.HTTP if decision.kind is Kind.HTTP else Kind.REFUSE
            decision = Decision(kind, state.preblocked, decision.host)
        return decision

    # -- HTTP (plain, or inside intercepted TLS) -------------------------------------------------------------
    def _guard(self, flow: http.HTTPFlow, hook: Callable[[http.HTTPFlow, Sandbox], None], phase: str) -> None:
        """Run an HTTP hook for a flow of a known sandbox; an exception blocks the flow (see the module docstring)."""
        state = self.connections.get(flow.client_conn.id)
        if state is None:
            if phase == "requestheaders":
                flow.response = http.Response.make(403, "egress: no sandbox\n")
            return
        try:
            hook(flow, state.sandbox)
        except Exception as exc:
            log.exception("egress: %s hook failed; the flow is blocked", phase)
            verdict = fail_closed(f"{phase}: {exc!r}")
            self.record_flow(flow, state.sandbox, verdict)
            if phase in {"requestheaders", "request", "response"} and flow.websocket is None:
                answer_blocked(flow, verdict)
            else:
                self.flows.cut(flow)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._guard(flow, self._requestheaders, "requestheaders")

    def request(self, flow: http.HTTPFlow) -> None:
        mark_judged(flow)
        if flow.response is None:
            self._guard(flow, self.flows.request, "request")

    def error(self, flow: http.HTTPFlow) -> None:
        """mitmproxy ended a flow on an error. One whose request it refused before it was whole (never judged, never
        forwarded: an HTTP/2 stream whose body broke its Content-Length, a frame out of place, a malformed HTTP/1
        body) is a blocked attempt: recorded, with its request line and authority (`flows.unforwarded_error`)."""
        self._guard(flow, self._error, "error")

    def _error(self, flow: http.HTTPFlow, sandbox: Sandbox) -> None:
        state = self.connections.get(flow.client_conn.id)
        if state is not None and state.severed:
            return
        verdict = unforwarded_error(flow)
        if verdict is not None:
            self.record_flow(flow, sandbox, verdict)

    def response(self, flow: http.HTTPFlow) -> None:
        self._guard(flow, self.flows.response, "response")

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        self._guard(flow, self.flows.websocket_message, "websocket_message")

    def _raw_after(self, context: Context, flow: http.HTTPFlow) -> layer.Layer | None:
        """After a ``101`` to a protocol the policy allows: the stream through the detectors (`EgressHttpLayer`)."""
        state = self.connections.get(flow.client_conn.id)
        if state is None or not self.flows.upgrade_allowed(flow):
            return None
        return InspectLayer(context, state.sandbox, self.gate.inspector(flow_meta(flow)), self._on_verdict)

    def _control(self, flow: http.HTTPFlow, payload: bytes, from_client: bool) -> bool:
        """A WebSocket ping or pong payload (`EgressHttpLayer`): True when it is blocked. An exception here is
        the layer's to handle (it closes the connection)."""
        state = self.connections.get(flow.client_conn.id)
        if state is None:
            return True
        return self.flows.control(flow, state.sandbox, payload, from_client)

    def _requestheaders(self, flow: http.HTTPFlow, sandbox: Sandbox) -> None:
        state = self.connections[flow.client_conn.id]
        decision = state.decision
        hosts = _request_hosts(flow.request)
        verdict: Verdict | None = None
        if decision is not None and decision.kind is Kind.HTTP and not state.http_seen:
            # The connection's first request: the gate's decision judged its Host (and its bytes); every other name
            # it gives (an absolute-form target, which an origin server follows instead of Host) is judged too,
            # each must be allowed (red team 8: `POST http://blocked.lab/` with an allowed Host crossed unjudged).
            verdict = decision.verdict or decision.allow
            hosts = [host for host in hosts if host != decision.host]
            if verdict is not None and verdict.action is Enforcement.BLOCK:
                hosts = []
        state.http_seen = True
        sni = decision.host if decision is not None and decision.kind is Kind.INTERCEPT else None
        meta = self._flow_meta(flow, state)
        if any(b"\n" in value for _, value in flow.request.headers.fields):
            # A folded field line (obs-fold), which mitmproxy joins and forwards folded: a server that takes the
            # fold as a line of its own reads a Host the gateway never judged (red team 9). The gate refuses the
            # same fold in a connection's first request (`Gate._unread_http`).
            verdict, hosts = protocol_refusal(f"{flow.request.method} {flow.request.path[:80]}: a folded field"), []
        elif (disagreement := _stream_disagreement(flow.request)) is not None:
            # An HTTP/2 stream whose `:authority`, `host` fields and `:path` do not name one destination (red team
            # 10a: `:path: http://blocked.lab/` with an allowed `:authority` reached blocked.lab through an HTTP/2
            # forwarder that resolves the path against the authority). Refused whole, as red team 9's fix refuses
            # an HTTP/1 request that names two hosts: which one a server follows is the server's choice.
            verdict, hosts = protocol_refusal(f"{flow.request.method} stream: {disagreement}"), []
        for host in hosts:
            judged = self.gate.on_request(sandbox, meta, host, sni)
            if verdict is None or _rank(judged) > _rank(verdict):
                verdict = judged
            if judged.action is Enforcement.BLOCK:
                break
        if verdict is None or verdict.action is not Enforcement.BLOCK:
            # A Host or target naming another port than the connection's (red team 9), decrypted or not.
            port = next((port for port in _request_ports(flow.request) if port_differs(port, meta.dport)), None)
            if port is not None:
                judged = decide_authority_port(sandbox, meta.dst, meta.dport, flow.request.pretty_host, port)
                verdict = judged if verdict is None or _rank(judged) > _rank(verdict) else verdict
        if verdict is not None:
            self.record_flow(flow, sandbox, verdict)
            if verdict.action is Enforcement.BLOCK:
                answer_blocked(flow, verdict)
                return
        self.flows.requestheaders(flow, sandbox)

    def _flow_meta(self, flow: http.HTTPFlow, state: _Connection) -> FlowMeta:
        meta = flow_meta(flow)
        if state.preblocked is not None:
            return FlowMeta(meta.transport, meta.src, meta.sport, *state.destination)
        return meta


_H2_START: Final = b"PRI * HTTP/2.0"
"""The HTTP/2 preface's request line: a method reserved for it (RFC 9113 §3.4), never an HTTP/1 request."""


def _h2_preface(data: bytes) -> bool:
    """Whether a client's first bytes are (or may still become) the HTTP/2 connection preface."""
    return data.startswith(_H2_START) or (len(data) < len(_H2_START) and _H2_START.startswith(data))


def _h2_without_alpn(context: Context, meta: FlowMeta) -> Finding:
    alpn = context.client.alpn.decode("latin-1", "replace") if context.client.alpn else "none"
    text = (f"HTTP/2 preface inside intercepted TLS to {meta.dst}:{meta.dport} without ALPN h2 (ALPN {alpn}): "
            "HTTP/2 with prior knowledge, its frames not inspected")  # fmt: skip
    return Finding(Category.TUNNEL, H2C_NOT_INSPECTED, "proxy", evidence(text))


def _note_passage(state: _Connection, verdict: Verdict, host: str) -> None:
    """Keep what the flow log needs of a verdict on a connection: the first that let something through, or that
    a block cut it (an HTTP request's 403 does not: the connection goes on)."""
    if verdict.action is not Enforcement.BLOCK:
        if state.passed is None:
            state.passed, state.passed_host = verdict, host
    elif state.decision is None or state.decision.kind is not Kind.HTTP:
        state.cut = True


def _rank(verdict: Verdict) -> int:
    """Which of a request's verdicts it is recorded with: a block, else one worth a record, else the first."""
    return 2 if verdict.action is Enforcement.BLOCK else int(verdict.recorded)


def _request_hosts(request: http.Request) -> list[str]:
    """Every host a request names: its Host (HTTP/2: ``:authority``) and, in absolute form, the target's, which an
    origin server must follow instead of Host (RFC 9112 §3.2.2): a fronting client can put the front in Host and
    its real host in the target. Each is judged; the first that blocks decides."""
    names = [request.pretty_host]
    if request.authority:
        names.append(url.parse_authority(request.authority, check=False)[0])
    # An empty port (`Host: allowed.lab:`, RFC 3986's `port = *DIGIT`: no port) is no part of the name; mitmproxy's
    # `pretty_host` keeps the colon, which once judged `allowed.lab:` as another name (`name-address-mismatch`).
    names = [_without_empty_port(name).lower().rstrip(".") for name in names]
    # An origin-form target (or an absolute one's path) that a lenient server reads as an authority (red team 9:
    # `//blocked.lab/`, `/\\blocked.lab/` with an allowed Host reached blocked.lab through a forwarder).
    names += [host for host, _ in target_authorities(request.path)]
    return list(dict.fromkeys(names))


def _stream_disagreement(request: http.Request) -> str | None:
    """`stream_disagreement` of an HTTP/2 or HTTP/3 request (HTTP/1's target and Host lines are judged by
    `_request_hosts` and the gate's reader); None for HTTP/1."""
    if not (request.is_http2 or request.is_http3):
        return None
    return stream_disagreement(request.method, request.authority, request.path, request.headers.get_all("host"))


def _request_ports(request: http.Request) -> list[str]:
    """Every port a request names: its Host's (HTTP/2: ``:authority``), an absolute target's, and an authority
    target's (`target_authorities`)."""
    ports = [split_host_port(request.host_header or "")[1]]
    if request.authority:
        ports.append(split_host_port(request.authority)[1])
    ports += [port for _, port in target_authorities(request.path)]
    return [port for port in ports if port]


def _without_empty_port(name: str) -> str:
    """A host name with an empty port's colon taken off (``allowed.lab:``); an IPv6 literal left as it is."""
    return name[:-1] if name.endswith(":") and name.count(":") == 1 else name
