"""egress.proxy.mitm.addon: which layer each decision becomes, and that every decision, allowed or not, is
reported once with what ties it to its flow (the decision log line)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from mitmproxy import flow as mitmflow
from mitmproxy import http, websocket
from mitmproxy.addons.next_layer import NeedsMoreData
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.server_hooks import ServerConnectionHookData
from mitmproxy.test import tflow
from wsproto.frame_protocol import Opcode

from egress.decide import Enforcement, Reason
from egress.proxy.gate import Decision, Kind
from egress.proxy.mitm.addon import EgressAddon
from egress.proxy.mitm.layers import FAIL_CLOSED, InspectLayer, RefuseLayer
from egress.proxy.mitm.upgrades import EgressHttpLayer
from tests.proxy.mitm import ALLOWED_ADDRESS, OTHER_ADDRESS, SANDBOX_HOST, Reported, client, make_context, make_gate
from tests.proxy.test_front import _client_hello, _hello_padded

SINK = ("127.0.0.1", 9)


def _addon(mode: str = "enforce", extra: str = "") -> tuple[EgressAddon, Reported]:
    reported = Reported()
    return EgressAddon(make_gate(mode, extra), reported, SINK, reported.sever), reported


NO_SHAPE_WATCH = "    detectors: {mining_shape: allow}\n"
"""A policy that asks no mining-shape watch of a host rule's TLS (SSH inside TLS is still watched)."""


@pytest.mark.parametrize("extra", ["", NO_SHAPE_WATCH], ids=["mining-shape-watched", "mining-shape-allowed"])
@pytest.mark.parametrize(
    "hello",
    [lambda: _client_hello("allowed.test"), lambda: _hello_padded("allowed.test", 17_000)],
    ids=["late-or-trickled-hello", "hello-over-the-peek"],
)
def test_host_rule_tls_that_reaches_mitmproxy_is_relayed_through_the_front_s_watch(
    hello: Callable[[], bytes], extra: str
) -> None:
    """A host rule's TLS reaches mitmproxy when the front could not judge it (the client was silent past the
    front's wait, or its hello is bigger than the front peeks: tests/proxy/test_front_handoff.py). It is relayed
    as the front relays it, through the TLS shape watch from its hello (its first byte) on: not unwatched (issue 9:
    mining through a bound name by delaying the hello), and not refused (a loaded machine delays honest hellos)."""
    addon, reported = _addon(extra=extra)
    context = make_context((ALLOWED_ADDRESS, 443))
    addon.client_connected(context.client)
    data = hello()
    layer = addon._next_layer(context, data, b"")
    assert isinstance(layer, InspectLayer) and layer.watch is not None
    assert layer.watch.passes(True, data) and layer.watch.client_tls  # watched from the hello, at offset 0
    [flow] = reported.flows
    assert flow.verdict.action is Enforcement.ALLOW
    assert (flow.sandbox, flow.src, flow.sport) == ("box", SANDBOX_HOST, 40000)
    assert (flow.dst, flow.dport, flow.transport, flow.host) == (ALLOWED_ADDRESS, 443, "tcp", "allowed.test")
    assert flow.verdict.rule == "sandboxes.box.allow.hosts[0]"


def test_a_watched_host_rule_tls_in_report_mode_is_relayed_through_the_watch_and_logged() -> None:
    addon, reported = _addon("report")
    context = make_context((ALLOWED_ADDRESS, 443))
    addon.client_connected(context.client)
    layer = addon._next_layer(context, _client_hello("allowed.test"), b"")
    assert isinstance(layer, InspectLayer) and layer.watch is not None
    [flow] = reported.flows
    assert flow.verdict.action is Enforcement.ALLOW and flow.verdict.finding is None


def test_network_rule_tls_that_reaches_mitmproxy_unwatched_is_refused() -> None:
    """A network rule's TLS is watched by the front only (its `expect` asks it): one that reaches mitmproxy is
    refused as ``tunnel``/``tls-unwatched`` unless the rule lets TLS through unwatched."""
    addon, reported = _addon()
    context = make_context((ALLOWED_ADDRESS, 3333))
    addon.client_connected(context.client)
    layer = addon._next_layer(context, _client_hello("allowed.test"), b"")
    assert isinstance(layer, RefuseLayer)
    [flow] = reported.flows
    assert flow.verdict.action is Enforcement.BLOCK and flow.verdict.reason is Reason.TUNNEL
    assert flow.verdict.finding is not None and flow.verdict.finding.protocol == "tls-unwatched"


def test_raw_tcp_a_network_rule_allows_is_inspected_and_logged_as_allowed() -> None:
    addon, reported = _addon()
    context = make_context((ALLOWED_ADDRESS, 3333))
    addon.client_connected(context.client)
    layer = addon._next_layer(context, b"hello, plain bytes\n", b"")
    assert isinstance(layer, InspectLayer)
    [flow] = reported.flows
    assert flow.verdict.action is Enforcement.ALLOW and flow.verdict.rule == "sandboxes.box.allow.networks[0]"


def test_a_destination_no_rule_allows_is_never_dialled_and_is_refused_once() -> None:
    addon, reported = _addon()
    context = make_context((OTHER_ADDRESS, 443), connected=False)
    addon.client_connected(context.client)
    data = ServerConnectionHookData(context.server, context.client)
    addon.server_connect(data)
    assert context.server.address == SINK  # the sink, not the destination
    layer = addon._next_layer(context, _client_hello("allowed.test"), b"")
    assert isinstance(layer, RefuseLayer)
    addon.client_disconnected(context.client)
    [flow] = reported.flows  # reported when decided, not again when closed
    assert flow.verdict.action is Enforcement.BLOCK
    assert (flow.dst, flow.dport, flow.host) == (OTHER_ADDRESS, 443, "allowed.test")


def _dialled(addon: EgressAddon, port: int = 443) -> Context:
    """A report-mode connection to a destination no rule allows, through `server_connect` (which dials it)."""
    context = make_context((OTHER_ADDRESS, port), connected=False)
    addon.client_connected(context.client)
    addon.server_connect(ServerConnectionHookData(context.server, context.client))
    assert context.server.address == (OTHER_ADDRESS, port)  # report mode: dialled, not sent to the sink
    return context


def test_report_mode_records_a_connection_the_destination_refused() -> None:
    """Issue 10 point 7: the dial fails (RST) or the server closes before a byte, so no layer is ever chosen: the
    would-block decided at connect time is recorded when the connection ends, once."""
    addon, reported = _addon("report")
    context = _dialled(addon, 81)
    assert reported.flows == []  # not yet: bytes may still come and say more
    addon.client_disconnected(context.client)
    addon.client_disconnected(context.client)
    [flow] = reported.flows
    assert flow.verdict.action is Enforcement.WOULD_BLOCK and flow.verdict.reason is Reason.DIRECT_IP
    assert (flow.sandbox, flow.src, flow.sport, flow.dst, flow.dport) == ("box", SANDBOX_HOST, 40000, OTHER_ADDRESS, 81)


def test_report_mode_records_a_connection_that_spoke_once_not_twice() -> None:
    addon, reported = _addon("report")
    context = _dialled(addon)
    addon._next_layer(context, _client_hello("elsewhere.test"), b"")
    addon.client_disconnected(context.client)
    [flow] = reported.flows  # the first bytes' decision, with the SNI; not the connect-time one again
    assert flow.verdict.action is Enforcement.WOULD_BLOCK and flow.host == "elsewhere.test"


def test_an_allowed_destination_is_not_recorded_when_it_refuses() -> None:
    addon, reported = _addon("report")
    context = make_context((ALLOWED_ADDRESS, 3333), connected=False)
    addon.client_connected(context.client)
    addon.server_connect(ServerConnectionHookData(context.server, context.client))
    addon.client_disconnected(context.client)
    assert reported.flows == []


def test_a_source_outside_every_sandbox_is_refused_and_reported() -> None:
    addon, reported = _addon()
    stranger = client("192.0.2.66")
    addon.client_connected(stranger)
    assert stranger.error
    [flow] = reported.flows
    assert (flow.sandbox, flow.src, flow.verdict.reason) == ("", "192.0.2.66", Reason.SPOOFED_SOURCE)


def _request(host: str) -> http.HTTPFlow:
    flow = tflow.tflow()
    flow.client_conn.peername = (SANDBOX_HOST, 40001)
    flow.server_conn.address = (ALLOWED_ADDRESS, 80)
    flow.request.host, flow.request.port = host, 80
    flow.request.headers["Host"] = host
    return flow


def test_each_http_request_is_decided_and_logged() -> None:
    addon, reported = _addon()
    allowed, spoofed = _request("allowed.test"), _request("evil.test")
    for flow in (allowed, spoofed):
        flow.client_conn = allowed.client_conn  # keep-alive: two requests on one connection
    addon.client_connected(allowed.client_conn)
    addon.requestheaders(allowed)
    addon.requestheaders(spoofed)
    assert allowed.response is None
    assert spoofed.response is not None and spoofed.response.status_code == 403
    assert "X-Egress-Blocked" in spoofed.response.headers
    assert [(f.host, f.verdict.action) for f in reported.flows] == [
        ("allowed.test", Enforcement.ALLOW),
        ("evil.test", Enforcement.BLOCK),
    ]
    assert all((f.dst, f.dport, f.sport) == (ALLOWED_ADDRESS, 80, 40001) for f in reported.flows)


def _plain_http(addon: EgressAddon, host: str = "allowed.test") -> Context:
    """A plain-HTTP connection the gate decided on its first request's bytes (Host ``host``), as mitmproxy's
    ``next_layer`` meets it."""
    context = make_context((ALLOWED_ADDRESS, 80))
    addon.client_connected(context.client)
    first = f"POST /api HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    assert isinstance(addon._next_layer(context, first, b""), EgressHttpLayer)
    decision = addon.connections[context.client.id].decision
    assert decision is not None and (decision.kind, decision.host) == (Kind.HTTP, host)
    return context


def _on(context: Context, host: str, target: str | None = None) -> http.HTTPFlow:
    """A request on ``context``'s connection with Host ``host``; ``target``: an absolute-form target's authority."""
    flow = _request(host)
    flow.client_conn = context.client
    if target is not None:
        flow.request.authority = target
        flow.request.host = target.rsplit(":", 1)[0]  # mitmproxy sets the Host header too: set back below
        flow.request.headers["Host"] = host
    return flow


@pytest.mark.parametrize("target", ["evil.test", "evil.test:80", "pool.test:3333", "EVIL.test."])
def test_a_first_plain_request_s_absolute_target_is_judged_beside_its_host(target: str) -> None:
    """Red team 8: the gate decides a plain connection's first request by its Host; an absolute-form target
    (``POST http://evil.test/api`` with ``Host: allowed.test``), which an origin server follows instead, must be
    allowed too (the addon once gave that request the connection's decision alone)."""
    addon, reported = _addon()
    context = _plain_http(addon)
    flow = _on(context, "allowed.test", target)
    addon.requestheaders(flow)
    assert flow.response is not None and flow.response.status_code == 403
    [record] = reported.flows
    assert (record.verdict.action, record.verdict.reason) == (Enforcement.BLOCK, Reason.NOT_ALLOWLISTED)
    assert target.split(":", maxsplit=1)[0].lower().rstrip(".") in record.verdict.evidence


def test_a_first_plain_request_whose_target_and_host_agree_passes_once_judged() -> None:
    addon, reported = _addon()
    context = _plain_http(addon)
    flow = _on(context, "allowed.test", "allowed.test:80")
    addon.requestheaders(flow)
    assert flow.response is None
    assert [f.verdict.action for f in reported.flows] == [Enforcement.ALLOW]


@pytest.mark.parametrize("target", [None, "evil.test", "allowed.test"])
def test_every_later_plain_request_is_judged_by_the_gate_not_given_the_first_s_decision(target: str | None) -> None:
    """Red team 8: "this connection's first request was seen" was kept in ``flow.metadata``, which mitmproxy makes
    anew per request: every request counted as the first and passed on the connection's decision (a second
    request's ``Host: evil.test``, or its absolute target, crossed unjudged)."""
    addon, reported = _addon()
    context = _plain_http(addon)
    first, second = _on(context, "allowed.test"), _on(context, "evil.test", target)
    addon.requestheaders(first)
    addon.requestheaders(second)
    assert first.response is None
    assert second.response is not None and second.response.status_code == 403
    assert [(f.host, f.verdict.action) for f in reported.flows] == [
        ("allowed.test", Enforcement.ALLOW),
        ("evil.test", Enforcement.BLOCK),
    ]


def test_a_plain_connection_s_first_request_blocked_by_its_decision_is_not_judged_again() -> None:
    addon, reported = _addon()
    context = _plain_http(addon, "evil.test")
    flow = _on(context, "evil.test", "other.test")
    addon.requestheaders(flow)
    assert flow.response is not None and flow.response.status_code == 403
    [record] = reported.flows
    assert record.verdict.reason is Reason.NOT_ALLOWLISTED and "evil.test" in record.verdict.evidence


# -- inside intercepted TLS ----------------------------------------------------------------------------------------
def _decrypted(addon: EgressAddon, alpn: bytes | None = None) -> Context:
    """A connection whose TLS the gateway intercepted: the layer choice is now about the decrypted bytes."""
    context = make_context((ALLOWED_ADDRESS, 443))
    addon.client_connected(context.client)
    addon.connections[context.client.id].decision = Decision(Kind.INTERCEPT, host="allowed.test")
    context.layers.append(RefuseLayer(context))  # stands for the TLS layers: the stack is no longer the top one
    context.client.alpn = alpn
    return context


@pytest.mark.parametrize(
    ("client", "server", "alpn", "expected"),
    [
        (b'{"id":1,"method":"mining.subscribe","params":[]}\n', b"", None, InspectLayer),
        (b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n", b"", b"http/1.1", EgressHttpLayer),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"\x00\x00\x00\x04", b"h2", EgressHttpLayer),
        (b"", b"* OK ready\r\n", None, InspectLayer),
        (b"\x00binary of no protocol", b"", b"h2", InspectLayer),
    ],
)
def test_decrypted_bytes_get_a_layer_that_inspects_them(
    client: bytes, server: bytes, alpn: bytes | None, expected: type
) -> None:
    addon, _ = _addon()
    layer = addon._next_layer(_decrypted(addon, alpn), client, server)
    assert type(layer) is expected
    if isinstance(layer, InspectLayer):
        assert (layer.held is not None) == (not client)  # HTTP after a server greeting is refused


def test_with_an_http_alpn_the_client_is_awaited_even_when_the_server_speaks_first() -> None:
    addon, _ = _addon()
    with pytest.raises(NeedsMoreData):
        addon._next_layer(_decrypted(addon, b"h2"), b"", b"\x00\x00\x12\x04")


def test_tls_inside_intercepted_tls_is_refused_and_recorded() -> None:
    addon, reported = _addon()
    layer = addon._next_layer(_decrypted(addon), _client_hello("blocked.test"), b"")
    assert isinstance(layer, RefuseLayer)
    [flow] = reported.flows
    assert flow.verdict.finding is not None and flow.verdict.finding.protocol == "tls-in-tls"


# -- fail closed ---------------------------------------------------------------------------------------------------
class _Choice:
    """What mitmproxy hands ``next_layer``."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.layer: object = None

    def data_client(self) -> bytes:
        return b"GET / HTTP/1.1\r\n\r\n"

    def data_server(self) -> bytes:
        return b""


def _explode(*_args: object) -> None:
    raise ValueError("bug or attacker bytes")


def test_an_error_choosing_a_layer_refuses_the_connection_and_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    addon, reported = _addon()
    context = make_context((ALLOWED_ADDRESS, 80))
    addon.client_connected(context.client)
    monkeypatch.setattr(addon, "_next_layer", _explode)
    choice = _Choice(context)
    addon.next_layer(choice)  # type: ignore[arg-type]
    assert isinstance(choice.layer, RefuseLayer)
    [flow] = reported.flows
    assert (flow.verdict.action, flow.verdict.rule) == (Enforcement.BLOCK, FAIL_CLOSED)


@pytest.mark.parametrize("hook", ["requestheaders", "request", "response"])
def test_an_error_in_an_http_hook_blocks_the_request_and_is_recorded(
    hook: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    addon, reported = _addon()
    flow = _request("allowed.test")
    flow.response = None
    addon.client_connected(flow.client_conn)
    monkeypatch.setattr(addon.flows, hook, _explode)
    monkeypatch.setattr(addon.gate, "on_request", _explode)
    getattr(addon, hook)(flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert [f.verdict.rule for f in reported.flows] == [FAIL_CLOSED]


def test_an_error_on_a_websocket_message_drops_it_and_severs_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    addon, reported = _addon()
    flow = tflow.twebsocketflow()
    flow.client_conn.peername = (SANDBOX_HOST, 40002)
    addon.client_connected(flow.client_conn)
    monkeypatch.setattr(addon.flows, "websocket_message", _explode)
    addon.websocket_message(flow)
    assert flow.websocket is not None and flow.websocket.messages[-1].dropped
    assert reported.severed == [flow.client_conn]
    assert [f.verdict.rule for f in reported.flows] == [FAIL_CLOSED]


# -- bodies, upgrades, WebSocket -----------------------------------------------------------------------------------
STRATUM = b'{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1"]}\n'


def test_a_body_in_an_unknown_coding_is_blocked_even_when_nothing_is_found_in_it() -> None:
    addon, reported = _addon()
    flow = _request("allowed.test")
    flow.response = None
    addon.client_connected(flow.client_conn)
    flow.request.headers["Content-Encoding"] = "bogus"
    flow.request.raw_content = b'{"query":"weather"}'
    addon.request(flow)
    assert flow.response is not None and flow.response.status_code == 403
    [decided] = reported.flows
    assert decided.verdict.finding is not None and decided.verdict.finding.protocol == "unidentified"


@pytest.mark.parametrize(("method", "upgrade"), [("GET", "rawtcp"), ("GET", "h2c"), ("POST", "websocket")])
def test_an_unknown_upgrade_is_answered_403(method: str, upgrade: str) -> None:
    addon, reported = _addon()
    flow = _request("allowed.test")
    flow.response = None
    flow.request.method = method
    flow.request.headers["Upgrade"] = upgrade
    addon.client_connected(flow.client_conn)
    addon.requestheaders(flow)
    assert flow.response is not None and flow.response.status_code == 403
    assert reported.flows[-1].verdict.finding is not None
    assert reported.flows[-1].verdict.finding.protocol == "unknown-upgrade"


def test_a_101_to_anything_but_a_parsed_websocket_is_killed() -> None:
    addon, _ = _addon()
    flow = _request("allowed.test")
    flow.response = http.Response.make(101, b"", {"Upgrade": "rawtcp"})
    addon.client_connected(flow.client_conn)
    addon.response(flow)
    assert flow.error is not None and not flow.live


def test_a_response_with_a_job_is_replaced_without_echoing_it() -> None:
    addon, _ = _addon()
    flow = _request("allowed.test")
    job = b'{"id":null,"method":"mining.notify","params":["j1","00",[],"1",true]}\n'
    flow.response = http.Response.make(200, job, {"Content-Type": "application/json"})
    addon.client_connected(flow.client_conn)
    addon.response(flow)
    assert flow.response.status_code == 403 and b"mining.notify" not in bytes(flow.response.headers) + (
        flow.response.content or b""
    )


def test_a_mining_websocket_message_is_dropped_and_the_connection_severed() -> None:
    addon, reported = _addon()
    flow = tflow.twebsocketflow()
    flow.client_conn.peername = (SANDBOX_HOST, 40003)
    assert flow.websocket is not None
    flow.websocket.messages.append(websocket.WebSocketMessage(Opcode.TEXT, True, STRATUM))
    addon.client_connected(flow.client_conn)
    addon.websocket_message(flow)
    assert flow.websocket.messages[-1].dropped
    assert reported.severed == [flow.client_conn]
    assert reported.flows[-1].verdict.reason is Reason.MINING


@pytest.mark.parametrize("alpn", [None, b"http/1.1"], ids=["no-alpn", "http1-alpn"])
@pytest.mark.parametrize(
    "extra", [b"\x00\x00\x00\x04\x00\x00\x00\x00\x00", b"", b"junk"], ids=["frames", "alone", "junk"]
)
def test_an_http2_preface_without_alpn_h2_is_refused_as_h2c(alpn: bytes | None, extra: bytes) -> None:
    """Red team 3: mitmproxy's HTTP/1 reader took the preface for a ``PRI *`` request without Host, recorded as
    domain-fronting. ``junk``: the preface's request line and blank line then something else is no HTTP/1 either."""
    addon, reported = _addon()
    preface = b"PRI * HTTP/2.0\r\n\r\n" + (b"SM\r\n\r\n" + extra if extra != b"junk" else extra)
    layer = addon._next_layer(_decrypted(addon, alpn), preface, b"")
    assert isinstance(layer, RefuseLayer)
    [flow] = reported.flows
    assert (flow.verdict.action, flow.verdict.reason) == (Enforcement.BLOCK, Reason.TUNNEL)
    assert flow.verdict.finding is not None and flow.verdict.finding.protocol == "h2c-not-inspected"
    assert flow.host == "allowed.test"


@pytest.mark.parametrize("cut", [1, 3, 14, 18, 23])
def test_a_preface_in_pieces_waits_for_the_rest(cut: int) -> None:
    """Its first 18 bytes alone are a whole HTTP/1-looking head: waited on, never handed to the HTTP layer."""
    addon, reported = _addon()
    with pytest.raises(NeedsMoreData):
        addon._next_layer(_decrypted(addon), b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[:cut], b"")
    assert reported.flows == []


def _errored(addon: EgressAddon, message: str, judged: bool = False) -> http.HTTPFlow:
    context = _decrypted(addon, b"h2")
    flow = tflow.tflow()
    flow.client_conn = context.client
    flow.request.authority = "allowed.test"
    if judged:
        addon.request(flow)
    flow.error = mitmflow.Error(message)
    addon.error(flow)
    return flow


@pytest.mark.parametrize(
    "message",
    [
        "HTTP/2 protocol error: InvalidBodyLengthError: Expected 5 bytes, received 52",
        "HTTP/1 protocol error: Invalid chunked encoding length: b'zz'",
        "Received HTTP/2 data frame, expected headers.",
    ],
)
def test_a_request_mitmproxy_refused_before_it_was_whole_is_recorded(message: str) -> None:
    addon, reported = _addon()
    _errored(addon, message)
    [flow] = reported.flows
    assert (flow.verdict.action, flow.verdict.reason, flow.verdict.rule) == (
        Enforcement.BLOCK,
        Reason.TUNNEL,
        "http-protocol",
    )
    assert "allowed.test" in flow.verdict.evidence and "http-protocol-error" in flow.verdict.evidence


@pytest.mark.parametrize(
    ("message", "judged"),
    [
        ("stream reset by client (CANCEL)", False),
        ("peer closed connection", False),
        ("Client disconnected.", False),
        ("server closed connection", False),
        ("killed", False),
        ("HTTP/2 protocol error: after the request was judged", True),
    ],
)
def test_a_flow_that_ended_otherwise_is_not_recorded_as_refused(message: str, judged: bool) -> None:
    addon, reported = _addon()
    _errored(addon, message, judged)
    assert [f for f in reported.flows if f.verdict.rule == "http-protocol"] == []


def _h2_stream(context: Context, authority: str, path: str = "/", hosts: tuple[str, ...] = ()) -> http.HTTPFlow:
    """An HTTP/2 request on ``context``'s decrypted connection: ``:authority``, ``:path`` and ``host`` fields."""
    flow = _request("allowed.test")
    flow.client_conn = context.client
    flow.server_conn.address = (ALLOWED_ADDRESS, 443)
    flow.request.http_version = "HTTP/2.0"
    flow.request.port = 443
    del flow.request.headers["Host"]
    flow.request.authority, flow.request.path = authority, path
    for host in hosts:
        flow.request.headers.add("host", host)
    return flow


H2_DISAGREEING = {
    "path-absolute": ("allowed.test", "http://evil.test/", ()),
    "path-absolute-same-host": ("allowed.test", "https://allowed.test/", ()),
    "host-other": ("allowed.test", "/", ("evil.test",)),
    "two-hosts": ("allowed.test", "/", ("evil.test", "allowed.test")),
    "authority-userinfo": ("allowed.test@evil.test", "/", ()),
}


@pytest.mark.parametrize("name", list(H2_DISAGREEING))
def test_an_http2_stream_whose_fields_name_two_destinations_is_refused(name: str) -> None:
    """Red team 10a: `:path: http://blocked.lab/` with an allowed `:authority` crossed the decrypted path (the
    addon judged `:authority` alone, a forwarder resolved the path against it); a `host` that disagrees with
    `:authority`, or two, is refused the same way (h2's own check refuses some of them first, where on)."""
    addon, reported = _addon()
    authority, path, hosts = H2_DISAGREEING[name]
    flow = _h2_stream(_decrypted(addon, b"h2"), authority, path, hosts)
    addon.requestheaders(flow)
    assert flow.response is not None and flow.response.status_code == 403
    [record] = reported.flows
    assert (record.verdict.action, record.verdict.reason) == (Enforcement.BLOCK, Reason.TUNNEL)
    assert "stream" in record.verdict.evidence


@pytest.mark.parametrize("hosts", [(), ("allowed.test",), ("ALLOWED.TEST.",)])
def test_an_http2_stream_whose_fields_agree_is_judged_as_before(hosts: tuple[str, ...]) -> None:
    addon, reported = _addon()
    flow = _h2_stream(_decrypted(addon, b"h2"), "allowed.test", "/api?next=//x", hosts)
    addon.requestheaders(flow)
    assert flow.response is None
    assert [f.verdict.action for f in reported.flows] in ([], [Enforcement.ALLOW])


@pytest.mark.parametrize("later", [False, True], ids=["first", "later"])
def test_a_host_with_an_empty_port_is_judged_by_its_name(later: bool) -> None:
    """Red team 9's leftover: `Host: allowed.test:` (RFC 3986: an empty port is no port) was judged as the name
    `allowed.test:` (mitmproxy's `pretty_host` keeps the colon), another name than the address's: refused as
    `name-address-mismatch`, where the decrypted path served it. Its name is allowed.test."""
    addon, reported = _addon()
    context = _plain_http(addon)
    if later:
        addon.requestheaders(_on(context, "allowed.test"))
    flow = _on(context, "allowed.test:")
    addon.requestheaders(flow)
    assert flow.response is None
    assert all(f.verdict.action is Enforcement.ALLOW for f in reported.flows)


def _dial_failed(addon: EgressAddon, error: str) -> Context:
    """An enforcing connection to the network rule's address:3333, dialled, the dial seen failing with ``error``."""
    context = make_context((ALLOWED_ADDRESS, 3333), connected=False)
    addon.client_connected(context.client)
    data = ServerConnectionHookData(context.server, context.client)
    addon.server_connect(data)
    assert context.server.address == (ALLOWED_ADDRESS, 3333)  # allowed by address: dialled
    context.server.error = error
    addon.server_connect_error(data)
    return context


def test_a_destination_that_resets_as_it_opens_is_recorded_as_unread() -> None:
    """Red team 16: a pool that pushes its job as it accepts and resets at once makes asyncio's connect fail with
    ``ECONNRESET`` (the reset is seen before the connect is); mitmproxy then closes the socket with the job unread,
    and nothing recorded the attempt. It is now a block that inspection could not make (fail closed), once."""
    addon, reported = _addon()
    context = _dial_failed(addon, "[Errno 104] Connect call failed ('198.51.100.7', 3333)")
    addon.client_disconnected(context.client)
    [flow] = reported.flows
    assert flow.verdict.action is Enforcement.BLOCK and flow.verdict.rule == FAIL_CLOSED
    assert (flow.dst, flow.dport) == (ALLOWED_ADDRESS, 3333)
    assert "reset the connection as it opened" in flow.verdict.evidence


@pytest.mark.parametrize("error", ["[Errno 111] Connect call failed ('198.51.100.7', 3333)", "timed out"])
def test_a_destination_that_refuses_or_never_answers_is_not_recorded(error: str) -> None:
    """Refused (a reset to the SYN) or unreachable: the destination sent nothing, nothing to judge."""
    addon, reported = _addon()
    context = _dial_failed(addon, error)
    addon.client_disconnected(context.client)
    assert reported.flows == []


UNFINISHED_STRATUM = (
    b"GET / HTTP/1.1\r\nHost: allowed.test\r\n"
    b'{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1"]}\n'
    b'{"id":2,"method":"mining.authorize","params":["rt16.worker","x"]}\n'
)


@pytest.mark.parametrize("port", [80, 3333], ids=["host-rule", "network-rule"])
@pytest.mark.parametrize(
    ("data", "reason"),
    [(UNFINISHED_STRATUM, Reason.MINING), (b"GET / HTTP/1.1\r\nHost: allowed.test\r\nUser-Agent: cu", None)],
    ids=["stratum", "benign"],
)
def test_a_client_gone_with_an_unfinished_head_is_judged_by_the_pool_detectors(
    port: int, data: bytes, reason: Reason | None
) -> None:
    """Red team 16: an HTTP head never finished (no blank line), Stratum's lines in it, then the client's end
    (a reset reaches mitmproxy as an end): the gate waits for the rest, no layer is chosen, and nothing was
    recorded. Judged at the end by the pool detectors: ``mining``, once; an ordinary request cut short: nothing."""
    addon, reported = _addon()
    context = make_context((ALLOWED_ADDRESS, port), connected=False)
    addon.client_connected(context.client)
    addon.server_connect(ServerConnectionHookData(context.server, context.client))
    with pytest.raises(NeedsMoreData):
        addon._next_layer(context, data[:20], b"")
    with pytest.raises(NeedsMoreData):
        addon._next_layer(context, data, b"")
    addon.client_disconnected(context.client)
    assert [f.verdict.reason for f in reported.flows] == ([reason] if reason is not None else [])
    if reason is not None:
        [flow] = reported.flows
        assert flow.verdict.action is Enforcement.BLOCK and (flow.dst, flow.dport) == (ALLOWED_ADDRESS, port)
        assert "HTTP request head never finished" in flow.verdict.evidence


@pytest.mark.parametrize("mode", ["enforce", "report"])
@pytest.mark.parametrize(
    ("data", "reason"),
    [(UNFINISHED_STRATUM, Reason.MINING), (b"GET / HTTP/1.1\r\nHost: allowed.test\r\nUser-Agent: cu", None)],
    ids=["stratum", "benign"],
)
def test_an_unfinished_head_closed_by_the_idle_timeout_is_judged_by_the_pool_detectors(
    data: bytes, reason: Reason | None, mode: str
) -> None:
    """Red team 17: the same head, then silence: the idle timeout's watch closed it as ``idle-timeout`` only,
    unjudged. Now judged as a client's end is: ``mining`` (in report mode a would-block, and the close recorded
    too, since the timeout blocks in every mode); an ordinary request cut short: ``idle-timeout`` as before."""
    addon, reported = _addon(mode)
    context = make_context((ALLOWED_ADDRESS, 3333), connected=False)
    addon.client_connected(context.client)
    addon.server_connect(ServerConnectionHookData(context.server, context.client))
    with pytest.raises(NeedsMoreData):
        addon._next_layer(context, data, b"")
    addon.idle_closed(context.client, 300.0, "100 client bytes since its last progress, none forwarded")
    addon.client_disconnected(context.client)
    reasons = [f.verdict.reason for f in reported.flows]
    if reason is None:
        assert reasons == [Reason.IDLE_TIMEOUT]
        return
    assert reasons == ([reason] if mode == "enforce" else [reason, Reason.IDLE_TIMEOUT])
    flow = reported.flows[0]
    assert (flow.dst, flow.dport) == (ALLOWED_ADDRESS, 3333)
    assert "HTTP request head never finished (the client went silent" in flow.verdict.evidence
    assert flow.verdict.action is (Enforcement.BLOCK if mode == "enforce" else Enforcement.WOULD_BLOCK)
