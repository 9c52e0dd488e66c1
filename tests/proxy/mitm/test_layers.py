"""egress.proxy.mitm.layers: our layers played event by event, the way mitmproxy's own layer tests are."""

from __future__ import annotations

from collections.abc import Callable

from mitmproxy.connection import ConnectionState
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.context import Context

from egress.decide import Enforcement, Reason, Verdict
from egress.detect.base import FlowView, Result
from egress.detect.engine import STREAM_CAP, UNIDENTIFIED, FlowInspector
from egress.policy.model import Sandbox
from egress.proxy.gate import flow_meta
from egress.proxy.holdback import HOLD_FOR
from egress.proxy.mitm.layers import FAIL_CLOSED, InspectLayer, RefuseLayer, http_start
from tests.proxy.mitm import ALLOWED_ADDRESS, SANDBOX_HOST, make_context, make_gate

STRATUM = b'{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1"]}\n'


def _play(layer: RefuseLayer | InspectLayer, *incoming: events.Event) -> list[tuple[str, ...]]:
    """The commands the layer emits, as (command, side[, data]): mitmproxy's commands do not compare by value."""
    played: list[tuple[str, ...]] = []
    for event in incoming:
        for command in layer.handle_event(event):
            if isinstance(command, commands.RequestWakeup):
                played.append(("RequestWakeup", f"{command.delay:g}"))
                continue
            assert isinstance(command, commands.ConnectionCommand), command
            side = "client" if command.connection is layer.context.client else "server"
            data = (command.data.decode(),) if isinstance(command, commands.SendData) else ()
            played.append((type(command).__name__, side, *data))
    return played


CLOSE_BOTH = [("CloseConnection", "server"), ("CloseConnection", "client")]


def _inspecting(
    mode: str = "enforce", strict: bool = False, clock: Callable[[], float] = lambda: 0.0
) -> tuple[InspectLayer, Context, list[Verdict]]:
    gate = make_gate(mode)
    context = make_context((ALLOWED_ADDRESS, 3333))
    sandbox = gate.sandbox(str(context.client.peername[0]))
    assert sandbox is not None
    seen: list[Verdict] = []

    def on_verdict(_context: Context, _sandbox: Sandbox, verdict: Verdict) -> None:
        seen.append(verdict)

    inspector = gate.inspector(flow_meta((SANDBOX_HOST, 40000), (ALLOWED_ADDRESS, 3333)))
    layer = InspectLayer(context, sandbox, inspector, on_verdict, strict=strict, clock=clock)
    return layer, context, seen


def test_refuse_closes_both_sides_and_forwards_nothing() -> None:
    context = make_context((ALLOWED_ADDRESS, 443))
    played = _play(RefuseLayer(context), events.Start(), events.DataReceived(context.client, b"hello"))
    assert played == CLOSE_BOTH


def test_refuse_before_the_server_is_dialled_closes_the_client_only() -> None:
    context = make_context((ALLOWED_ADDRESS, 443), connected=False)
    assert _play(RefuseLayer(context), events.Start()) == [("CloseConnection", "client")]


def test_inspect_relays_what_the_detectors_do_not_recognise() -> None:
    layer, context, seen = _inspecting()
    played = _play(layer, events.Start(), events.DataReceived(context.client, b"GET-ish bytes of no protocol\n"))
    assert played == [("SendData", "server", "GET-ish bytes of no protocol\n")]
    assert seen == []


def test_a_blocking_finding_closes_both_sides_before_forwarding_the_bytes() -> None:
    layer, context, seen = _inspecting()
    played = _play(layer, events.Start(), events.DataReceived(context.client, STRATUM))
    assert played == CLOSE_BOTH
    [verdict] = seen
    assert (verdict.action, verdict.reason) == (Enforcement.BLOCK, Reason.MINING)
    assert _play(layer, events.DataReceived(context.client, b"more")) == []  # done: nothing more is relayed


def test_in_report_mode_the_finding_is_reported_and_the_bytes_go_through() -> None:
    layer, context, seen = _inspecting("report")
    played = _play(layer, events.Start(), events.DataReceived(context.client, STRATUM))
    assert played == [("SendData", "server", STRATUM.decode())]
    assert [v.action for v in seen] == [Enforcement.WOULD_BLOCK]


def _exploding_inspecting(guard_http: bool = False) -> tuple[InspectLayer, Context, list[Verdict]]:
    layer, context, seen = _inspecting()
    if guard_http:
        layer.held = b""

    def explode(_view: FlowView) -> Result:
        raise ValueError("a detector failed on attacker bytes")

    layer.inspector = FlowInspector(layer.inspector.view.meta, (explode,))
    return layer, context, seen


def test_an_error_while_inspecting_closes_both_sides_and_forwards_nothing() -> None:
    layer, context, seen = _exploding_inspecting()
    played = _play(layer, events.Start(), events.DataReceived(context.client, b"attacker bytes"))
    assert played == CLOSE_BOTH
    [verdict] = seen
    assert (verdict.action, verdict.rule, verdict.reason) == (Enforcement.BLOCK, FAIL_CLOSED, Reason.TUNNEL)


def test_after_a_server_greeting_http_from_the_client_is_refused() -> None:
    layer, context, seen = _inspecting()
    layer.held = b""  # what the addon sets when the server spoke first (guard_http)
    played = _play(
        layer,
        events.Start(),
        events.DataReceived(context.server, b"* OK ready\r\n"),
        events.DataReceived(context.client, b"PO"),  # held: could still become a method
        events.DataReceived(context.client, b"ST /api HTTP/1.1\r\n"),
    )
    assert played == [("SendData", "client", "* OK ready\r\n"), *CLOSE_BOTH]
    [verdict] = seen
    assert verdict.finding is not None and verdict.finding.protocol == "http-after-greeting"


def test_after_a_server_greeting_other_client_bytes_are_relayed_once_they_cannot_be_http() -> None:
    layer, context, seen = _inspecting()
    layer.held = b""
    played = _play(
        layer,
        events.Start(),
        events.DataReceived(context.client, b"CO"),  # held: could become COPY or CONNECT
        events.DataReceived(context.client, b"OL STUFF\r\n"),
        events.DataReceived(context.client, b"more\r\n"),
    )
    assert played == [("SendData", "server", "COOL STUFF\r\n"), ("SendData", "server", "more\r\n")]
    assert seen == []


def test_http_start_needs_enough_bytes_to_tell() -> None:
    assert http_start(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") is True
    assert http_start(b"GET / HTTP/1.1\r\n") is True
    assert http_start(b"PRI * HT") is None and http_start(b"GE") is None
    assert http_start(b"* OK") is False and http_start(b"\x16\x03\x01") is False


def test_a_later_mining_finding_replaces_a_node_call_and_each_is_reported_once() -> None:
    """Report mode lets both through: the node call is reported once (not again with each later segment), then
    the mining call that follows it on the same connection is reported too (egress.detect.engine.RANK)."""
    layer, context, seen = _inspecting("report")
    node = b'{"id":1,"jsonrpc":"2.0","method":"eth_chainId","params":[]}\n'
    work = b'{"id":2,"jsonrpc":"2.0","method":"eth_getWork","params":[]}\n'
    _play(layer, events.Start(), events.DataReceived(context.client, node))
    _play(layer, events.DataReceived(context.client, b" "))
    _play(layer, events.DataReceived(context.client, work))
    assert [(v.action, v.reason) for v in seen] == [
        (Enforcement.WOULD_BLOCK, Reason.CRYPTO_NODE),
        (Enforcement.WOULD_BLOCK, Reason.MINING),
    ]


PADDED_MINING = b" " * (STREAM_CAP + 4096) + b'{"id":1,"method":"mining.subscribe","params":[]}\n'


def test_where_the_policy_names_the_protocols_a_stream_left_unidentified_at_the_cap_is_blocked() -> None:
    """Issue 9: padding past the inspection cap hid Stratum on a network rule; the cap now ends unjudged flows
    there (strict: the rule's ``expect`` lacks ``any``) instead of relaying the rest."""
    layer, context, seen = _inspecting(strict=True)
    played = _play(layer, events.Start(), events.DataReceived(context.client, PADDED_MINING))
    assert played == CLOSE_BOTH
    [verdict] = seen
    assert (verdict.action, verdict.reason) == (Enforcement.BLOCK, Reason.TUNNEL)
    assert verdict.finding is not None and verdict.finding.protocol == UNIDENTIFIED


def test_where_the_policy_expects_any_protocol_an_unidentified_stream_is_relayed() -> None:
    layer, context, seen = _inspecting(strict=False)
    played = _play(layer, events.Start(), events.DataReceived(context.client, PADDED_MINING))
    assert played == [("SendData", "server", PADDED_MINING.decode())]
    assert seen == []


def test_a_mining_message_in_one_byte_segments_is_held_and_never_forwarded_in_part() -> None:
    """Issue 9: the relay forwarded each segment as it came, so 63 bytes of a 64-byte subscribe reached the pool
    before the detectors had the whole message. Now the open message is held until it closes and is judged."""
    layer, context, seen = _inspecting()
    played = _play(layer, events.Start(), *(events.DataReceived(context.client, STRATUM[i : i + 1]) for i in range(64)))
    assert [p for p in played if p[0] == "SendData"] == []
    assert played[-2:] == CLOSE_BOTH
    assert [(v.action, v.reason) for v in seen] == [(Enforcement.BLOCK, Reason.MINING)]


def test_a_held_message_goes_out_whole_when_it_closes_and_the_server_direction_is_never_held() -> None:
    layer, context, seen = _inspecting()
    benign = b'{"id":1,"method":"server.version","params":["probe"]}\n'
    played = _play(
        layer,
        events.Start(),
        events.DataReceived(context.client, benign[:20]),
        events.DataReceived(context.server, b'{"partial'),
        events.DataReceived(context.client, benign[20:]),
    )
    assert played == [
        ("RequestWakeup", "1"),
        ("SendData", "client", '{"partial'),
        ("SendData", "server", benign.decode()),
    ]
    assert seen == []


def test_a_client_that_sends_part_of_a_message_and_waits_gets_it_through_after_the_bound() -> None:
    """A stall would be worse than the bytes: binary with an unbalanced brace, or a client waiting inside a
    message, has its held bytes forwarded once the oldest waited HOLD_FOR (the wakeup asks for it once)."""
    now = [100.0]
    layer, context, seen = _inspecting(clock=lambda: now[0])
    played = _play(
        layer,
        events.Start(),
        events.DataReceived(context.client, b"LOGIN {"),
        events.DataReceived(context.client, b"x"),
    )
    assert played == [("RequestWakeup", "1"), ("SendData", "server", "LOGIN ")]
    wakeup = events.Wakeup(commands.RequestWakeup(HOLD_FOR))
    now[0] = 100.5
    assert _play(layer, wakeup) == [("RequestWakeup", "0.5")]  # early: asks again for what is left
    now[0] = 101.0
    assert _play(layer, wakeup) == [("SendData", "server", "{x")]
    assert seen == []


def test_a_client_that_ends_inside_a_held_message_gets_the_detectors_last_look() -> None:
    layer, context, seen = _inspecting()
    partial = STRATUM[:-3]  # the closing brackets never come: a lenient server might still take it at the end
    played = _play(
        layer, events.Start(), events.DataReceived(context.client, partial), events.ConnectionClosed(context.client)
    )
    assert [p for p in played if p[0] == "SendData"] == []
    assert [(v.action, v.reason) for v in seen] == [(Enforcement.BLOCK, Reason.MINING)]


def test_a_benign_held_tail_goes_out_before_the_client_half_closes() -> None:
    layer, context, seen = _inspecting()
    context.client.state = ConnectionState.CAN_WRITE
    played = _play(
        layer, events.Start(), events.DataReceived(context.client, b'{"a":'), events.ConnectionClosed(context.client)
    )
    assert played == [("RequestWakeup", "1"), ("SendData", "server", '{"a":'), ("CloseTcpConnection", "server")]
    assert seen == []


def test_an_unidentified_stream_that_the_gate_exempts_is_relayed() -> None:
    """A host rule's port is strict too (`Gate.strict`), but a stream that upgraded to TLS with a bound name
    (`Gate.bound_tls_in`, the ``exempt`` callback) is TLS to a named host, not unidentified."""
    gate = make_gate()
    context = make_context((ALLOWED_ADDRESS, 443))
    sandbox = gate.sandbox(str(context.client.peername[0]))
    assert sandbox is not None
    seen: list[Verdict] = []
    asked: list[int] = []

    def exempt(client: bytes) -> bool:
        asked.append(len(client))
        return True

    inspector = gate.inspector(flow_meta((SANDBOX_HOST, 40000), (ALLOWED_ADDRESS, 443)))
    layer = InspectLayer(context, sandbox, inspector, lambda *a: seen.append(a[2]), strict=True, exempt=exempt)
    played = _play(layer, events.Start(), events.DataReceived(context.client, PADDED_MINING))
    assert played == [("SendData", "server", PADDED_MINING.decode())]
    assert seen == [] and asked == [STREAM_CAP], "asked once, at the cap, with what the inspection read"


def test_where_the_policy_names_the_protocols_a_message_left_open_is_judged_not_forwarded() -> None:
    """Issue 9, point 3: a miner that pauses inside its login for longer than the hold got every byte but the last
    to the pool. Where the destination's protocols are named (strict), the hold's end judges the flow unidentified
    and blocks it: none of the held bytes is forwarded."""
    now = [100.0]
    layer, context, seen = _inspecting(strict=True, clock=lambda: now[0])
    played = _play(layer, events.Start(), *(events.DataReceived(context.client, STRATUM[i : i + 1]) for i in range(63)))
    assert [p for p in played if p[0] == "SendData"] == []
    now[0] = 100.0 + HOLD_FOR
    assert _play(layer, events.Wakeup(commands.RequestWakeup(HOLD_FOR))) == CLOSE_BOTH
    [verdict] = seen
    assert (verdict.action, verdict.reason) == (Enforcement.BLOCK, Reason.TUNNEL)
    assert verdict.finding is not None and verdict.finding.protocol == UNIDENTIFIED
    assert "left open" in verdict.finding.evidence
