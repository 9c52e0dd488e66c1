"""egress.proxy.upgraded: TLS that starts mid-stream to a host rule's port (STARTTLS, a hello after a server's
banner) is watched as the front watches TLS, from the bound ClientHello on (issue 9: SSH or Stratum inside it
reached a bound name unwatched). Real TLS bytes (Python's ssl over memory BIOs) played in the order of the wire,
and the addon's and the layer's part of it."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from mitmproxy.proxy import commands, events

from egress.decide import Enforcement, Reason
from egress.detect.base import Finding
from egress.lab import certs
from egress.proxy.gate import Decision, Kind, flow_meta
from egress.proxy.mitm.layers import InspectLayer
from egress.proxy.upgraded import Upgraded, host_rule_watch
from tests.proxy.mitm import ALLOWED_ADDRESS, SANDBOX_HOST, make_context, make_gate
from tests.proxy.mitm.test_addon import _addon
from tests.proxy.test_front import HTTPS_LIKE, SSH_IN_TLS, _client_hello

STARTTLS = (b"EHLO sandbox\r\nSTARTTLS\r\n", b"220 mail.test ESMTP\r\n250 ok\r\n220 go ahead\r\n")
"""A client's and a server's plaintext opening before TLS (SMTP, RFC 3207)."""
BANNER = (b"", b"* OK server ready\r\n")
"""A server that speaks first; the client answers with its hello."""


def _wire(tmp_path: Path, sni: str, script: list[tuple[str, int]]) -> list[tuple[bool, bytes]]:
    """A TLS handshake naming ``sni`` and then ``script`` (each entry one write: one record), as the chunks each
    side put on the wire, in order: (from the client?, bytes)."""
    files = certs.ensure(tmp_path / "certs")
    chain, key = files.servers["pool"]
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(chain, key)
    client_context = ssl.create_default_context()
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_NONE
    to_server, from_client, to_client, from_server = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(to_client, from_client, server_hostname=sni)
    server = server_context.wrap_bio(to_server, from_server, server_side=True)
    wire: list[tuple[bool, bytes]] = []

    def carry() -> None:
        for outgoing, incoming, side in ((from_client, to_server, True), (from_server, to_client, False)):
            data = outgoing.read()
            if data:
                wire.append((side, data))
                incoming.write(data)

    done = {"client": False, "server": False}
    for _ in range(10):
        for name, end in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    end.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
            carry()
    assert all(done.values()), done
    for side, size in script:
        (client if side == "c" else server).write((b"c" if side == "c" else b"s") * size)
        carry()
    return wire


class _Watched:
    def __init__(self, mining_shape: str = "block", mode: str = "enforce") -> None:
        extra = f"    detectors: {{mining_shape: {mining_shape}}}\n"
        self.gate = make_gate(mode=mode, extra=extra)
        sandbox = self.gate.sandbox(SANDBOX_HOST)
        assert sandbox is not None
        self.sandbox = sandbox
        self.findings: list[Finding] = []
        self.decisions: list[Decision] = []
        """What an unbound hello was judged (`Gate.unbound_hello`), as the addon records it."""
        self.meta = flow_meta((SANDBOX_HOST, 40000), (ALLOWED_ADDRESS, 443))
        watch = host_rule_watch(sandbox, self._found)
        self.upgraded = Upgraded(
            watch, lambda client: self.gate.bound_hello_at(sandbox, self.meta, client), unbound=self._unbound
        )

    def _unbound(self, client: bytes) -> bool | None:
        decision = self.gate.unbound_hello(self.sandbox, self.meta, client)
        if decision is None:
            return None
        self.decisions.append(decision)
        return decision.kind is Kind.REFUSE

    def _found(self, finding: Finding) -> bool:
        self.findings.append(finding)
        return True  # as the policy's block would

    def play(self, opening: tuple[bytes, bytes], wire: list[tuple[bool, bytes]]) -> int:
        """Plays the plaintext opening (the server's first where the client says nothing first), then ``wire``;
        the number of TLS chunks that passed before one was stopped."""
        client, server = opening
        first = [(False, server), (True, client)] if not client else [(True, client), (False, server)]
        for side, data in first:
            assert self.upgraded.passes(side, data), "the plaintext opening is not the watch's"
        for index, (side, data) in enumerate(wire):
            if not self.upgraded.passes(side, data):
                return index
        return len(wire)


@pytest.mark.parametrize("opening", [STARTTLS, BANNER], ids=["starttls", "server-banner"])
def test_ssh_inside_tls_after_a_plaintext_opening_is_stopped_at_its_first_encrypted_packet(
    tmp_path: Path, opening: tuple[bytes, bytes]
) -> None:
    wire = _wire(tmp_path, "allowed.test", SSH_IN_TLS)
    watched = _Watched()
    passed = watched.play(opening, wire)
    assert [f.protocol for f in watched.findings] == ["ssh-in-tls"]
    assert passed < len(wire) and wire[passed][0], "stopped at a client record"
    unsent = [data for side, data in wire[passed:] if side]
    from_first_encrypted = [size for side, size in SSH_IN_TLS[SSH_IN_TLS.index(("c", 44)) :] if side == "c"]
    assert len(unsent) == len(from_first_encrypted), "stopped at the client's first encrypted packet (44 B)"


@pytest.mark.parametrize("opening", [STARTTLS, BANNER], ids=["starttls", "server-banner"])
def test_https_like_tls_after_a_plaintext_opening_passes(tmp_path: Path, opening: tuple[bytes, bytes]) -> None:
    wire = _wire(tmp_path, "allowed.test", HTTPS_LIKE)
    watched = _Watched()
    assert watched.play(opening, wire) == len(wire)
    assert watched.findings == []


@pytest.mark.parametrize("opening", [STARTTLS, BANNER], ids=["starttls", "server-banner"])
def test_tls_naming_an_unbound_host_is_refused_at_its_hello_as_the_front_refuses_it(
    tmp_path: Path, opening: tuple[bytes, bytes]
) -> None:
    """Not TLS to a bound name: judged at its hello by the front's decision, with the front's reason, and the
    hello is not forwarded (before: left to the inspection's cap, its first 16 KiB crossed)."""
    wire = _wire(tmp_path, "unbound.test", SSH_IN_TLS)
    watched = _Watched()
    assert watched.play(opening, wire) == 0, "the client's hello itself is not forwarded"
    front = watched.gate.on_first_bytes(watched.sandbox, watched.meta, wire[0][1], b"", watching=True)
    assert front.kind is Kind.REFUSE and front.verdict is not None
    assert [(d.kind, d.verdict, d.host) for d in watched.decisions] == [(Kind.REFUSE, front.verdict, "unbound.test")]
    assert watched.findings == []


def test_tls_naming_an_unbound_host_in_report_mode_is_recorded_once_and_passes(tmp_path: Path) -> None:
    wire = _wire(tmp_path, "unbound.test", HTTPS_LIKE)
    watched = _Watched(mode="report")
    assert watched.play(STARTTLS, wire) == len(wire)
    assert len(watched.decisions) == 1 and watched.decisions[0].kind is not Kind.REFUSE
    verdict = watched.decisions[0].verdict
    assert verdict is not None and verdict.action is Enforcement.WOULD_BLOCK, verdict


def test_a_hello_split_over_chunks_is_judged_when_whole_and_a_plaintext_opening_never() -> None:
    watched = _Watched()
    hello = _client_hello("unbound.test")
    assert watched.upgraded.passes(True, b"STARTTLS\r\n\x16\x03 not a hello\r\n")
    assert watched.upgraded.passes(True, hello[:100]), "not whole yet"
    assert not watched.upgraded.passes(True, hello[100:])
    assert [d.kind for d in watched.decisions] == [Kind.REFUSE]


def test_no_hello_within_the_cap_stops_the_search() -> None:
    watched = _Watched()
    watched.upgraded.cap = 64
    assert watched.upgraded.passes(True, b"x" * 64)
    assert watched.upgraded.passes(True, b"y" * 10_000)
    assert watched.upgraded.client == b"x" * 64, "nothing more kept past the cap"


def test_the_addon_watches_an_inspected_stream_to_a_host_rules_port_only() -> None:
    addon, _ = _addon()
    for port, watched in ((443, True), (3333, False)):  # 3333: a network rule's (TLS inside is unidentified)
        context = make_context((ALLOWED_ADDRESS, port))
        addon.client_connected(context.client)
        layer = addon._next_layer(context, STARTTLS[0], b"")
        assert isinstance(layer, InspectLayer)
        assert (layer.watch is not None) is watched, port
        assert layer.watch is None or layer.watch.unbound is not None, "an unbound hello is judged at once"


def test_the_inspect_layer_closes_both_sides_when_the_watch_says_so_and_forwards_nothing(tmp_path: Path) -> None:
    addon, reported = _addon()
    context = make_context((ALLOWED_ADDRESS, 443))
    addon.client_connected(context.client)
    layer = addon._next_layer(context, STARTTLS[0], b"")
    assert isinstance(layer, InspectLayer)
    forwarded: list[bytes] = []
    played = [events.DataReceived(context.client, STARTTLS[0]), events.DataReceived(context.server, STARTTLS[1])]
    played += [
        events.DataReceived(context.client if side else context.server, data)
        for side, data in _wire(tmp_path, "allowed.test", SSH_IN_TLS)
    ]
    stopped: bytes | None = None
    for event in [events.Start(), *played]:
        names = []
        for command in layer.handle_event(event):
            names.append(type(command).__name__)
            if isinstance(command, commands.SendData) and command.connection is context.server:
                forwarded.append(command.data)
        if "CloseConnection" in names:
            assert isinstance(event, events.DataReceived) and event.connection is context.client
            stopped = event.data
            break
    assert stopped is not None, "closed"
    assert stopped not in forwarded, "the record that completed the shape is not forwarded"
    flows = [flow for flow in reported.flows if flow.verdict.finding is not None]
    assert [(f.verdict.action, f.verdict.reason, f.verdict.finding.protocol if f.verdict.finding else "", f.host)
            for f in flows] == [(Enforcement.BLOCK, Reason.TUNNEL, "ssh-in-tls", "allowed.test")]  # fmt: skip


def test_the_clients_tls_records_are_followed_until_they_stop_being_records() -> None:
    watched = _Watched()
    upgraded = watched.upgraded
    hello = _client_hello("allowed.test")
    assert upgraded.passes(True, STARTTLS[0]) and not upgraded.client_records
    assert upgraded.passes(True, hello[:7]) and not upgraded.client_records, "a hello not whole yet"
    assert upgraded.passes(True, hello[7:]) and upgraded.client_records
    record = b"\x17\x03\x03\x00\x05{abcd"
    for at in range(len(record)):  # a record in 1-byte pieces is still one
        upgraded.passes(True, record[at : at + 1])
    assert upgraded.client_records
    upgraded.passes(True, b'{"id":1,"method":"login"')  # no record after the hello: held again (holdback)
    assert not upgraded.client_records


def test_tls_after_the_opening_is_not_held_as_a_partial_json_message() -> None:
    """A record of ciphertext that happens to end inside an open brace must not be held (and, after a pause,
    judged a message left open): the direction is TLS, as one that starts with a hello (`egress.proxy.holdback`).
    The keep-alive poller's false positive in the lab (a STARTTLS stream, records every 10 s)."""
    addon, reported = _addon()
    context = make_context((ALLOWED_ADDRESS, 443))
    addon.client_connected(context.client)
    layer = addon._next_layer(context, STARTTLS[0], b"")
    assert isinstance(layer, InspectLayer)
    record = b"\x17\x03\x03\x00\x08" + b"\x01\x02{abcde"
    sent: list[bytes] = []
    for event in [
        events.Start(),
        events.DataReceived(context.client, STARTTLS[0]),
        events.DataReceived(context.server, STARTTLS[1]),
        events.DataReceived(context.client, _client_hello("allowed.test")),
        events.DataReceived(context.client, record),
    ]:
        for command in layer.handle_event(event):
            assert not isinstance(command, commands.RequestWakeup), "nothing held"
            if isinstance(command, commands.SendData) and command.connection is context.server:
                sent.append(command.data)
    assert sent[-1] == record
    assert reported.flows == [] or all(flow.verdict.finding is None for flow in reported.flows)
