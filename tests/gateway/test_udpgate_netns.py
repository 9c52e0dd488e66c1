"""`egress.gateway.udpgate.UdpGate` on a real table in throwaway namespaces (root): the policy's rendered table
queues the sandbox's UDP to an allowed network, the gate reads it; what it accepts reaches the internet
namespace, what it refuses does not and is reported, and a judge that raises drops (fail closed)."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator

import pytest

from egress.decide import Reason
from egress.nft import runner
from egress.nft.render import GatewaySettings, render
from egress.policy.model import Policy
from tests.detect.test_datagrams import stratum, stun, wireguard, xmrig
from tests.nft import make_sandbox, udp_rule, udpgate
from tests.nft.netns import Topology, socket_in, topology
from tests.waiting import eventually, scaled

pytestmark = pytest.mark.root

T = Topology
PORT = 5000


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    with topology() as made:
        yield made


def _policy() -> Policy:
    return Policy(
        1, (make_sandbox("agents", "10.77.0.0/26", networks=(udp_rule("agents", 0, f"{T.INTERNET4}/32", PORT),)),)
    )


def _crosses(topo: Topology, data: bytes, sport: int) -> bool:
    """Whether ``data`` from the sandbox (source port ``sport``) reaches the internet namespace's ``PORT``."""
    with socket_in(topo.internet, socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind((T.INTERNET4, PORT))
        with socket_in(topo.sandbox, socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.bind((T.SANDBOX4, sport))
            client.sendto(data, (T.INTERNET4, PORT))
        return bool(select.select([server], [], [], scaled(1.0))[0]) and server.recv(65535) == data


def test_the_gate_forwards_the_benign_and_drops_and_reports_tunnels_and_pools(topo: Topology) -> None:
    settings = GatewaySettings(sandbox_if=topo.sandbox_if, uplink_if=topo.uplink_if)
    runner.apply(render(_policy(), settings), netns=topo.gateway)
    with udpgate.gate(topo.gateway, _policy()) as reported:
        assert _crosses(topo, stun(), 41000)
        assert not _crosses(topo, wireguard(), 41001)
        assert not _crosses(topo, stratum(), 41002)
        assert not _crosses(topo, stun(), 41001)  # the refused flow stays refused
        assert _crosses(topo, stun(), 41000)  # the benign flow goes on
        eventually(lambda: len(reported.decided) >= 2, timeout=scaled(5))
    reasons = {(d.sport, d.verdict.reason) for d in reported.decided}
    assert {(41001, Reason.TUNNEL), (41002, Reason.MINING)} <= reasons
    assert all(d.dst == T.INTERNET4 and d.dport == PORT and d.transport == "udp" for d in reported.decided)


def test_without_the_gate_nothing_crosses(topo: Topology) -> None:
    settings = GatewaySettings(sandbox_if=topo.sandbox_if, uplink_if=topo.uplink_if)
    runner.apply(render(_policy(), settings), netns=topo.gateway)
    assert not _crosses(topo, stun(), 42000)  # the chain udp_gate is empty: the sandbox's drop
    udpgate.install(topo.gateway)
    assert not _crosses(topo, stun(), 42001)  # the queue rule without a reader: the kernel drops


def test_an_exception_judging_drops_the_datagram(topo: Topology, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = GatewaySettings(sandbox_if=topo.sandbox_if, uplink_if=topo.uplink_if)
    runner.apply(render(_policy(), settings), netns=topo.gateway)

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("a detector's bug")

    with udpgate.gate(topo.gateway, _policy()):
        monkeypatch.setattr("egress.detect.datagrams.inspect", broken)
        assert not _crosses(topo, stun(), 43000)
        monkeypatch.undo()
        assert _crosses(topo, stun(), 43001)


def _pieces(data: bytes) -> list[bytes]:
    size = -(-len(data) // 3)
    return [data[i : i + size] for i in range(0, len(data), size)]


def _heard(topo: Topology, pieces: list[bytes], sport: int) -> list[bytes]:
    """What the internet namespace's ``PORT`` hears of ``pieces`` sent one after the other from one flow."""
    heard: list[bytes] = []
    with socket_in(topo.internet, socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind((T.INTERNET4, PORT))
        with socket_in(topo.sandbox, socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.bind((T.SANDBOX4, sport))
            for piece in pieces:
                client.sendto(piece, (T.INTERNET4, PORT))
        while select.select([server], [], [], scaled(1.0))[0]:
            heard.append(server.recv(65535))
    return heard


def test_a_split_message_crosses_whole_and_in_order_only_when_it_passes(topo: Topology) -> None:
    settings = GatewaySettings(sandbox_if=topo.sandbox_if, uplink_if=topo.uplink_if)
    runner.apply(render(_policy(), settings), netns=topo.gateway)
    benign = _pieces(b'{"id":7,"method":"status.report","params":["' + b"x" * 200 + b'"]}\n')
    with udpgate.gate(topo.gateway, _policy()) as reported:
        assert _heard(topo, benign, 44000) == benign  # held, then released in order
        assert _heard(topo, _pieces(xmrig()), 44001) == []  # held, then dropped with the message
        assert _heard(topo, benign[:2], 44002) == []  # never whole: held, then dropped at the deadline
        eventually(lambda: {44001, 44002} <= {d.sport for d in reported.decided}, timeout=scaled(5))
