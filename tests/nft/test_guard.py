"""The guard table (egress.nft.guard): rendered, and doing its job as root: with the policy table in force,
sandbox traffic is forwarded only while the guard's ``alive`` elements live, and stops by itself when they expire
(the supervisor gone) or when it is applied closed."""

from __future__ import annotations

import contextlib
import select
import socket

import pytest

from egress.nft import runner
from egress.nft.guard import guard_table, render_guard
from egress.nft.render import GatewaySettings, render
from egress.policy.model import Mode, Policy
from tests.nft import make_sandbox, udp_rule, udpgate
from tests.nft.netns import Topology, namespace, socket_in, topology
from tests.waiting import eventually, scaled

T = Topology
ALLOWED_UDP = 5000
SETTINGS = GatewaySettings(sandbox_if="sbx0", uplink_if="up0")


def test_closed_the_guard_has_no_live_interface() -> None:
    script = render_guard(SETTINGS)
    assert "table inet egress_guard {" in script and "flush set inet egress_guard alive" in script
    assert "add element" not in script
    assert 'add rule inet egress_guard prerouting iifname { "sbx0" } iifname != @alive drop' in script
    assert 'add rule inet egress_guard forward oifname { "sbx0" } oifname != @alive drop' in script
    assert 'add rule inet egress_guard output oifname { "sbx0" } oifname != @alive drop' in script


def test_a_refresh_never_deletes_the_table_or_a_chain() -> None:
    """Deleting a base chain unregisters its hook, and the kernel then drops every packet waiting in an NFQUEUE of
    the namespace (the UDP gate's held datagrams): a refresh flushes and writes again, it never deletes."""
    for script in (render_guard(SETTINGS), render_guard(SETTINGS, alive_for=5)):
        assert "delete" not in script
        for chain in ("prerouting", "forward", "output"):
            assert f"flush chain inet egress_guard {chain}" in script


def test_open_every_sandbox_interface_lives_for_the_given_seconds() -> None:
    policy = Policy(1, (make_sandbox("agents", "10.0.0.0/24", interface="sbx1"),))
    script = render_guard(SETTINGS, policy, alive_for=5)
    assert 'add element inet egress_guard alive { "sbx0" timeout 5s, "sbx1" timeout 5s }' in script
    assert 'iifname { "sbx0", "sbx1" }' in script


def test_the_guard_is_a_table_of_its_own() -> None:
    assert guard_table(SETTINGS) == "egress_guard"
    assert "table inet egress {" not in render_guard(SETTINGS)  # a reload replaces the policy table, not this


def test_a_negative_life_is_refused() -> None:
    with pytest.raises(ValueError):
        render_guard(SETTINGS, alive_for=-1)


@pytest.mark.root
def test_the_kernel_accepts_the_guard_open_and_closed() -> None:
    with namespace() as ns:
        runner.check(render_guard(GatewaySettings("lo", "lo"), alive_for=5), netns=ns)
        runner.check(render_guard(GatewaySettings("lo", "lo")), netns=ns)


def _sent(topo: Topology, source: str, port: int) -> bool:
    """Whether one datagram from ``source`` in the sandbox reaches the internet namespace's ``port``."""
    with socket_in(topo.internet, socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind((T.INTERNET4, port))
        with socket_in(topo.sandbox, socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.bind((source, 0))
            client.sendto(b"through", (T.INTERNET4, port))
        return bool(select.select([server], [], [], scaled(1.0))[0])


@pytest.mark.root
def test_without_heartbeats_nothing_is_forwarded_whatever_the_policy_table_allows() -> None:
    with topology() as topo, contextlib.ExitStack() as stack:
        settings = GatewaySettings(sandbox_if=topo.sandbox_if, uplink_if=topo.uplink_if)
        allowed = (udp_rule("agents", 0, f"{T.INTERNET4}/32", ALLOWED_UDP),)
        policy = Policy(
            1,
            (
                make_sandbox("agents", "10.77.0.0/26", networks=allowed),
                make_sandbox("shadow", "10.77.0.64/26", mode=Mode.REPORT),
            ),
        )
        runner.apply(render(policy, settings), netns=topo.gateway)
        runner.apply(render_guard(settings, policy, alive_for=3), netns=topo.gateway)
        gate = stack.enter_context(udpgate.gate(topo.gateway, policy))  # the gateway's UDP gate reads allowed UDP
        assert _sent(topo, T.SANDBOX4, ALLOWED_UDP)  # an allowed UDP network
        assert _sent(topo, T.SHADOW4, 9999)  # report mode
        # No heartbeat: the elements expire and the kernel stops forwarding by itself.
        assert eventually(lambda: not _sent(topo, T.SANDBOX4, ALLOWED_UDP), timeout=scaled(15), interval=0.2)
        assert not _sent(topo, T.SHADOW4, 9999)
        assert gate.decided == []  # what the gate saw, it allowed: the guard stopped the rest
        runner.apply(render_guard(settings, policy, alive_for=30), netns=topo.gateway)  # the supervisor is back
        assert _sent(topo, T.SANDBOX4, ALLOWED_UDP)
        runner.apply(render_guard(settings, policy), netns=topo.gateway)  # a stop closes it at once
        assert not _sent(topo, T.SANDBOX4, ALLOWED_UDP)
        assert not _sent(topo, T.SHADOW4, 9999)


@pytest.mark.root
def test_a_heartbeat_drops_nothing_the_udp_gate_holds() -> None:
    """A JSON line cut in three, its first piece held by the UDP gate (the message is open) while the guard is
    refreshed twice, then the rest: all three reach the internet namespace, in order. Before stop 30 each refresh
    deleted the guard table, the kernel flushed the queue, and the first piece was lost."""
    with topology() as topo:
        settings = GatewaySettings(sandbox_if=topo.sandbox_if, uplink_if=topo.uplink_if)
        policy = Policy(
            1,
            (
                make_sandbox(
                    "agents", "10.77.0.0/26", networks=(udp_rule("agents", 0, f"{T.INTERNET4}/32", ALLOWED_UDP),)
                ),
            ),
        )
        runner.apply(render(policy, settings), netns=topo.gateway)
        runner.apply(render_guard(settings, policy, alive_for=30), netns=topo.gateway)
        line = b'{"id":7,"method":"status.report","params":["' + b"x" * 120 + b'"]}\n'
        pieces = [line[:60], line[60:120], line[120:]]
        heard: list[bytes] = []
        with (
            udpgate.gate(topo.gateway, policy) as reported,
            socket_in(topo.internet, socket.AF_INET, socket.SOCK_DGRAM) as server,
        ):
            server.bind((T.INTERNET4, ALLOWED_UDP))
            with socket_in(topo.sandbox, socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.bind((T.SANDBOX4, 45000))
                client.sendto(pieces[0], (T.INTERNET4, ALLOWED_UDP))
                eventually(lambda: reported.held() == 1)  # held: the message is open
                for _ in range(2):  # two heartbeats while it is held
                    runner.apply(render_guard(settings, policy, alive_for=30), netns=topo.gateway)
                for piece in pieces[1:]:
                    client.sendto(piece, (T.INTERNET4, ALLOWED_UDP))
            while len(heard) < 3 and select.select([server], [], [], scaled(2.0))[0]:
                heard.append(server.recv(65535))
        assert heard == pieces, heard
        assert reported.decided == []
