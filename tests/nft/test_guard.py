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
    assert "table inet egress_guard {" in script and "delete table inet egress_guard" in script
    assert "elements" not in script
    assert 'iifname { "sbx0" } iifname != @alive drop' in script
    assert 'oifname { "sbx0" } oifname != @alive drop' in script


def test_open_every_sandbox_interface_lives_for_the_given_seconds() -> None:
    policy = Policy(1, (make_sandbox("agents", "10.0.0.0/24", interface="sbx1"),))
    script = render_guard(SETTINGS, policy, alive_for=5)
    assert 'elements = { "sbx0" timeout 5s, "sbx1" timeout 5s }' in script
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
