"""The transparent proxy: a mitmproxy 12 addon that enforces the policy on sandbox TCP, and the worker that runs it.

The only module that imports mitmproxy. A worker's connections arrive at `egress.proxy.front`, which relays allowed
TLS itself and hands every other connection, unread, to mitmproxy. The addon replaces mitmproxy's ``next_layer``
addon (subclassing it, so TLS interception and HTTP keep mitmproxy's own layering) and maps `egress.proxy.gate`
decisions onto layers:

- passthrough TLS (what the front did not take: a would-block in report mode) → ``TCPLayer(ignore=True)``;
- inspected TCP → `InspectLayer`, a TCP relay that feeds both directions to the detectors and closes both sides
  the moment one matches (mitmproxy 12.3's ``flow.kill()`` does not close raw TCP flows, so we do it in the layer);
- refused → `RefuseLayer`, which closes both sides without forwarding a byte;
- HTTP → mitmproxy's HTTP layer, with a 403 whose ``X-Egress-Blocked`` header and body say why.

The gateway dials out eagerly (server-first protocols need it), so `server_connect` first checks that some rule
could allow the destination address at all: a direct-IP connection is never dialled.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from mitmproxy import certs, connection, http, options
from mitmproxy.addons import core, proxyserver, tlsconfig
from mitmproxy.addons.next_layer import NeedsMoreData, NextLayer, stack_match
from mitmproxy.master import Master
from mitmproxy.proxy import commands, events, layer, layers
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers import modes
from mitmproxy.proxy.server_hooks import ServerConnectionHookData

from egress.decide import Enforcement, Verdict, decide_finding
from egress.decisions import DecidedFlow, Reporter
from egress.detect.base import FlowMeta, Transport
from egress.detect.engine import FlowInspector
from egress.policy.model import Sandbox
from egress.proxy.front import Front
from egress.proxy.gate import Decision, Gate, Kind

log = logging.getLogger("egress.proxy")

CommandGenerator = Generator[commands.Command, Any, None]


def _meta(context: Context) -> FlowMeta:
    src = context.client.peername
    dst = context.server.address or ("", 0)
    return FlowMeta(Transport.TCP, str(src[0]), int(src[1]), str(dst[0]), int(dst[1]))


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

    def __init__(self, context: Context, addon: EgressAddon, sandbox: Sandbox, inspector: FlowInspector) -> None:
        super().__init__(context, ignore=True)
        self.addon = addon
        self.sandbox = sandbox
        self.inspector = inspector

    def relay_messages(self, event: events.Event) -> CommandGenerator:
        inspector = self.inspector
        if isinstance(event, events.DataReceived) and not inspector.done:
            from_client = event.connection == self.context.client
            finding = inspector.feed_stream(from_client, event.data)
            if finding is not None:
                verdict = decide_finding(self.sandbox, finding)
                self.addon.record(self.context, self.sandbox, verdict, "")
                if verdict.action is Enforcement.BLOCK:
                    if self.context.server.connected:
                        yield commands.CloseConnection(self.context.server)
                    yield commands.CloseConnection(self.context.client)
                    self._handle_event = self.done
                    return
        yield from super().relay_messages(event)


@dataclass(slots=True)
class _Connection:
    sandbox: Sandbox
    decision: Decision | None = None
    preblocked: Verdict | None = None
    """Set when no rule could allow the destination address: the connection was sent to the sink instead."""
    destination: tuple[str, int] = ("", 0)
    recorded: bool = False


def _blocked_response(verdict: Verdict) -> http.Response:
    reason = verdict.reason.value if verdict.reason is not None else "blocked"
    line = f"egress blocked this request: {reason} ({verdict.rule}): {verdict.evidence}"
    return http.Response.make(
        403, line + "\n", {"Content-Type": "text/plain; charset=utf-8", "X-Egress-Blocked": line[:400]}
    )


class EgressAddon(NextLayer):
    """Replaces mitmproxy's ``nextlayer`` addon; see the module docstring."""

    def __init__(self, gate: Gate, reporter: Reporter, sink: tuple[str, int]) -> None:
        super().__init__()
        self.gate = gate
        self.reporter = reporter
        self.sink = sink
        """A local listener that takes connections to destinations no rule allows (see `server_connect`)."""
        self.connections: dict[str, _Connection] = {}

    # -- recording -------------------------------------------------------------------------------------------
    def record(self, context: Context, sandbox: Sandbox | None, verdict: Verdict, host: str) -> None:
        meta = _meta(context)
        state = self.connections.get(context.client.id)
        if state is not None:
            state.recorded = True
            if state.preblocked is not None:
                meta = FlowMeta(meta.transport, meta.src, meta.sport, *state.destination)
        attempt = DecidedFlow(
            ts=time.time(),
            sandbox=sandbox.name if sandbox is not None else "",
            src=meta.src,
            sport=meta.sport,
            dst=meta.dst,
            dport=meta.dport,
            transport="tcp",
            host=host,
            verdict=verdict,
        )
        self.reporter.report(attempt)

    # -- connection hooks ------------------------------------------------------------------------------------
    def client_connected(self, client: connection.Client) -> None:
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

    def client_disconnected(self, client: connection.Client) -> None:
        state = self.connections.pop(client.id, None)
        if state is not None and state.preblocked is not None and not state.recorded:
            host, port = state.destination
            source = (str(client.peername[0]), int(client.peername[1]))
            self.reporter.report(
                DecidedFlow(time.time(), state.sandbox.name, *source, host, port, "tcp", "", state.preblocked)
            )

    def server_connect(self, data: ServerConnectionHookData) -> None:
        state = self.connections.get(data.client.id)
        if state is None or data.server.address is None:
            data.server.error = "egress: no sandbox"
            return
        if state.decision is not None or state.preblocked is not None:
            return  # a later dial of an already judged connection (HTTP keep-alive to the same host)
        host, port = str(data.server.address[0]), int(data.server.address[1])
        state.destination = (host, port)
        verdict = self.gate.on_connect(state.sandbox, host, port)
        if verdict.action is Enforcement.BLOCK:
            # Never dial a destination no rule allows. The connection goes to a local sink instead, so the first
            # bytes can still be read (an HTTP client gets a 403 saying why, a TLS client's SNI is recorded).
            state.preblocked = verdict
            data.server.address = self.sink

    # -- layer choice ----------------------------------------------------------------------------------------
    def _next_layer(self, context: Context, data_client: bytes, data_server: bytes) -> layer.Layer | None:
        if not stack_match(context, [modes.TransparentProxy]):
            return super()._next_layer(context, data_client, data_server)  # inside intercepted TLS
        state = self.connections.get(context.client.id)
        if state is None:
            return RefuseLayer(context)
        meta = _meta(context)
        if state.preblocked is not None:
            meta = FlowMeta(meta.transport, meta.src, meta.sport, *state.destination)
            data_server = b""  # the sink's silence, not the destination's
        decision = self.gate.on_first_bytes(state.sandbox, meta, data_client, data_server)
        if decision.kind is Kind.WAIT:
            raise NeedsMoreData
        if state.preblocked is not None and (
            decision.verdict is None or decision.verdict.action is not Enforcement.BLOCK
        ):
            kind = Kind.HTTP if decision.kind is Kind.HTTP else Kind.REFUSE
            decision = Decision(kind, state.preblocked, decision.host)
        state.decision = decision
        if decision.verdict is not None and decision.kind is not Kind.HTTP:
            self.record(context, state.sandbox, decision.verdict, decision.host)
        elif decision.verdict is None and decision.kind is not Kind.HTTP:
            self.reporter.allowed("proxy")
        match decision.kind:
            case Kind.PASSTHROUGH:
                return layers.TCPLayer(context, ignore=True)
            case Kind.INSPECT:
                return InspectLayer(context, self, state.sandbox, self.gate.inspector(meta))
            case Kind.INTERCEPT:
                return super()._next_layer(context, data_client, data_server)
            case Kind.HTTP:
                return layers.HttpLayer(context, layers.http.HTTPMode.transparent)
            case _:
                return RefuseLayer(context)

    # -- HTTP (plain, or inside intercepted TLS) -------------------------------------------------------------
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        state = self.connections.get(flow.client_conn.id)
        if state is None:
            flow.response = http.Response.make(403, "egress: no sandbox\n")
            return
        decision = state.decision
        first = decision is not None and decision.kind is Kind.HTTP and not flow.metadata.get("egress-seen")
        flow.metadata["egress-seen"] = True
        verdict: Verdict | None
        if first and decision is not None:
            verdict = decision.verdict
        else:
            sni = decision.host if decision is not None and decision.kind is Kind.INTERCEPT else None
            host = flow.request.pretty_host.lower().rstrip(".")
            verdict = self.gate.on_request(state.sandbox, self._flow_meta(flow, state), host, sni)
        if verdict is None or verdict.action is Enforcement.ALLOW:
            self.reporter.allowed("proxy")
            return
        self.record_flow(flow, state.sandbox, verdict)
        if verdict.action is Enforcement.BLOCK:
            flow.response = _blocked_response(verdict)

    def request(self, flow: http.HTTPFlow) -> None:
        state = self.connections.get(flow.client_conn.id)
        if state is None or flow.response is not None:
            return
        head = f"{flow.request.method} {flow.request.path} HTTP/1.1\r\n".encode()
        head += b"".join(f"{k}: {v}\r\n".encode() for k, v in flow.request.headers.items()) + b"\r\n"
        finding = self.gate.inspect_once(_meta_from_flow(flow), head + (flow.request.content or b""), b"")
        if finding is None:
            return
        verdict = decide_finding(state.sandbox, finding)
        self.record_flow(flow, state.sandbox, verdict)
        if verdict.action is Enforcement.BLOCK:
            flow.response = _blocked_response(verdict)

    def websocket_message(self, flow: http.HTTPFlow) -> None:
        state = self.connections.get(flow.client_conn.id)
        if state is None or flow.websocket is None:
            return
        client = b"".join(m.content for m in flow.websocket.messages if m.from_client)
        server = b"".join(m.content for m in flow.websocket.messages if not m.from_client)
        finding = self.gate.inspect_once(_meta_from_flow(flow), client[:16384], server[:16384])
        if finding is None:
            return
        verdict = decide_finding(state.sandbox, finding)
        self.record_flow(flow, state.sandbox, verdict)
        if verdict.action is Enforcement.BLOCK:
            flow.websocket.messages[-1].drop()
            flow.kill()

    def _flow_meta(self, flow: http.HTTPFlow, state: _Connection) -> FlowMeta:
        meta = _meta_from_flow(flow)
        if state.preblocked is not None:
            return FlowMeta(meta.transport, meta.src, meta.sport, *state.destination)
        return meta

    def record_flow(self, flow: http.HTTPFlow, sandbox: Sandbox, verdict: Verdict) -> None:
        state = self.connections.get(flow.client_conn.id)
        meta = _meta_from_flow(flow) if state is None else self._flow_meta(flow, state)
        if state is not None:
            state.recorded = True
        attempt = DecidedFlow(
            time.time(),
            sandbox.name,
            meta.src,
            meta.sport,
            meta.dst,
            meta.dport,
            "tcp",
            flow.request.pretty_host,
            verdict,
        )
        self.reporter.report(attempt)


def _meta_from_flow(flow: http.HTTPFlow) -> FlowMeta:
    src = flow.client_conn.peername
    dst = flow.server_conn.address or (flow.request.host, flow.request.port)
    return FlowMeta(Transport.TCP, str(src[0]), int(src[1]), str(dst[0]), int(dst[1]))


async def run_worker(
    gate: Gate,
    reporter: Reporter,
    port: int,
    confdir: str,
    upstream_ca: str | None = None,
    reload: Callable[[], None] | None = None,
) -> None:
    """Run one proxy worker on ``port`` (where nftables redirects sandbox TCP) until cancelled or until a part of it
    ends (then the worker exits and the supervisor locks the gateway down); SIGHUP calls ``reload``.

    `egress.proxy.front.Front` accepts on ``port`` and relays allowed TLS itself; every other connection goes to
    mitmproxy's transparent-mode server instance (which listens only on an unused loopback port)."""
    if reload is not None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)
    opts = options.Options()
    sink = await asyncio.start_server(_sink, "127.0.0.1", 0)
    sink_address = sink.sockets[0].getsockname()[:2]
    # A lean master: only the addons the gateway needs. Every hook walks every addon, and DumpMaster's 34
    # made connection setup several times dearer (docs/gateway-performance.md).
    master = Master(opts, with_termlog=False)
    master.addons.add(core.Core(), proxyserver.Proxyserver(), tlsconfig.TlsConfig())
    master.addons.add(EgressAddon(gate, reporter, (str(sink_address[0]), int(sink_address[1]))))
    settings: dict[str, Any] = {
        "mode": ["transparent@127.0.0.1:0"],
        "connection_strategy": "eager",
        "confdir": confdir,
    }
    if upstream_ca:
        settings["ssl_verify_upstream_trusted_ca"] = upstream_ca
    opts.update(**settings)
    servers = master.addons.get("proxyserver").servers
    running = asyncio.create_task(master.run())
    deadline = time.monotonic() + START_TIMEOUT
    while not (len(servers) and all(instance.is_running for instance in servers)):
        failed = [instance.last_exception for instance in servers if instance.last_exception is not None]
        if failed:
            raise RuntimeError(f"mitmproxy's server did not start: {failed[0]}")
        if running.done():
            await running  # mitmproxy failed to start: raise its error
            raise RuntimeError("mitmproxy stopped before its server started")
        if time.monotonic() > deadline:
            raise RuntimeError(f"mitmproxy's server did not start within {START_TIMEOUT} s")
        await asyncio.sleep(0.01)
    [instance] = list(servers)

    async def handoff(conn: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=conn)
        except OSError as exc:
            log.debug("handoff: %s", exc)
            conn.close()
            return
        try:
            await instance.handle_stream(reader, writer)
        except Exception:
            log.exception("mitmproxy failed on a connection; closed")
            writer.close()

    front = asyncio.create_task(Front(gate, reporter, handoff).serve(port))
    await asyncio.wait({running, front}, return_when=asyncio.FIRST_COMPLETED)
    if front.done():
        running.cancel()
        front.result()  # the front failed (its error ends the worker)
        raise RuntimeError("the proxy worker's front stopped")
    front.cancel()
    running.result()  # mitmproxy shut down (its error, if any, ends the worker)


START_TIMEOUT = 30.0
"""Seconds mitmproxy's server may take to start before the worker gives up (and the gateway locks down)."""
SINK_SILENCE = 3.0
"""Seconds the sink waits for a client that says nothing before closing (a server-first protocol's client)."""


async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Holds a connection to a refused destination: reads and discards, never answers, closes on silence."""
    try:
        while await asyncio.wait_for(reader.read(65536), SINK_SILENCE):
            pass
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


def ensure_ca(confdir: str) -> None:
    """Make the gateway's CA in ``confdir`` (mitmproxy's files) unless it is there. The supervisor has it made
    before it starts the workers: workers that start together and each find no CA would each make one, and every
    worker whose CA lost the race to the file would sign with a CA that sandboxes do not trust."""
    certs.CertStore.from_store(confdir, "mitmproxy", options.Options().key_size)
