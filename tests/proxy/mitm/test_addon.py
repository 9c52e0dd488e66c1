"""egress.proxy.mitm.addon: which layer each decision becomes, and that every decision, allowed or not, is
reported once with what ties it to its flow (the decision log line)."""

from __future__ import annotations

from mitmproxy import http
from mitmproxy.proxy import layers
from mitmproxy.proxy.server_hooks import ServerConnectionHookData
from mitmproxy.test import tflow

from egress.decide import Enforcement, Reason
from egress.proxy.mitm.addon import EgressAddon
from egress.proxy.mitm.layers import InspectLayer, RefuseLayer
from tests.proxy.mitm import ALLOWED_ADDRESS, OTHER_ADDRESS, SANDBOX_HOST, Reported, client, make_context, make_gate
from tests.proxy.test_front import _client_hello

SINK = ("127.0.0.1", 9)


def _addon(mode: str = "enforce") -> tuple[EgressAddon, Reported]:
    reported = Reported()
    return EgressAddon(make_gate(mode), reported, SINK, reported.sever), reported


def test_allowed_tls_passes_through_and_is_logged_as_allowed() -> None:
    addon, reported = _addon()
    context = make_context((ALLOWED_ADDRESS, 443))
    addon.client_connected(context.client)
    layer = addon._next_layer(context, _client_hello("allowed.test"), b"")
    assert isinstance(layer, layers.TCPLayer) and not isinstance(layer, InspectLayer)
    [flow] = reported.flows
    assert flow.verdict.action is Enforcement.ALLOW
    assert (flow.sandbox, flow.src, flow.sport) == ("box", SANDBOX_HOST, 40000)
    assert (flow.dst, flow.dport, flow.transport, flow.host) == (ALLOWED_ADDRESS, 443, "tcp", "allowed.test")
    assert flow.verdict.rule == "sandboxes.box.allow.hosts[0]"


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
