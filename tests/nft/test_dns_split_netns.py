"""Two resolver processes (`GatewaySettings.more_dns_ports`), in namespaces (root): the applied table redirects
each sandbox's DNS, UDP and TCP, IPv4 and IPv6, from any of its sources and source ports, to its own process's
port (`egress.policy.partition.process_of`) and never to the other's, so each process's tunnel tracker sees all
of its sandboxes' queries; the gateway's input guard takes both ports. Stand-in listeners in the gateway namespace
play the two processes: what reaches which port is the kernel's doing."""

from __future__ import annotations

import select
import socket
from collections.abc import Iterator

import pytest

from egress.nft import runner
from egress.nft.render import GatewaySettings, render
from egress.policy.model import Policy
from egress.policy.partition import process_of
from tests.nft import make_sandbox
from tests.nft.netns import Topology, socket_in, topology
from tests.waiting import eventually, scaled

pytestmark = pytest.mark.root

T = Topology
PORTS = (5353, 5354)
SOURCES = {"agents": (T.SANDBOX4, T.SANDBOX6), "second": (T.SHADOW4, T.SHADOW6)}
"""Each sandbox's addresses in the sandbox namespace (both on its one link: the steering is by source address)."""


@pytest.fixture(scope="module")
def topo() -> Iterator[Topology]:
    assert [process_of(name, 2) for name in SOURCES] == [0, 1]  # the test's premise: one sandbox in each process
    with topology() as topo:
        policy = Policy(
            1,
            (
                make_sandbox("agents", "10.77.0.0/26", "fd77::/121"),  # SANDBOX4 .2, SANDBOX6 ::2
                make_sandbox("second", "10.77.0.64/26", "fd77::100/120"),  # SHADOW4 .70, SHADOW6 ::170
            ),
        )
        settings = GatewaySettings(
            sandbox_if=topo.sandbox_if, uplink_if=topo.uplink_if, dns_port=PORTS[0], more_dns_ports=PORTS[1:]
        )
        runner.apply(render(policy, settings), netns=topo.gateway)
        yield topo


def _listeners(topo: Topology, kind: int) -> dict[socket.socket, int]:
    """Sockets on both ports, both families, in the gateway namespace: socket → the port (process) it stands for."""
    out: dict[socket.socket, int] = {}
    for port in PORTS:
        for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            sock = socket_in(topo.gateway, family, kind)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            if kind == socket.SOCK_STREAM:
                sock.listen(64)
            sock.setblocking(False)
            out[sock] = port
    return out


def _close(socks: dict[socket.socket, int]) -> None:
    for sock in socks:
        sock.close()


def _expected(tag: bytes) -> int:
    return PORTS[process_of(tag.split(b"/")[0].decode(), 2)]


def test_each_sandbox_s_udp_queries_reach_its_own_process_only(topo: Topology) -> None:
    listeners = _listeners(topo, socket.SOCK_DGRAM)
    arrived: dict[bytes, int] = {}
    sent: list[bytes] = []
    try:
        for sandbox, addresses in SOURCES.items():
            for address in addresses:
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                gateway = T.GATEWAY6 if ":" in address else T.GATEWAY4
                for n in range(8):  # a new source port (a new conntrack entry) each time
                    tag = f"{sandbox}/{address}/{n}".encode()
                    with socket_in(topo.sandbox, family, socket.SOCK_DGRAM) as client:
                        client.bind((address, 0))
                        client.sendto(tag, (gateway, 53))
                    sent.append(tag)

        def all_arrived() -> bool:
            ready, _, _ = select.select(list(listeners), [], [], 0.1)
            for sock in ready:
                while True:
                    try:
                        data, _addr = sock.recvfrom(512)
                    except BlockingIOError:
                        break
                    assert data not in arrived, f"{data!r} arrived twice"
                    arrived[data] = listeners[sock]
            assert set(arrived) == set(sent), f"not arrived: {sorted(set(sent) - set(arrived))}"
            return True

        eventually(all_arrived, timeout=10)
        assert {tag: port for tag, port in arrived.items()} == {tag: _expected(tag) for tag in sent}
    finally:
        _close(listeners)


def test_each_sandbox_s_tcp_queries_reach_its_own_process_only(topo: Topology) -> None:
    listeners = _listeners(topo, socket.SOCK_STREAM)
    clients: list[socket.socket] = []
    accepted: dict[str, int] = {}
    try:
        for addresses in SOURCES.values():
            for address in addresses:
                family = socket.AF_INET6 if ":" in address else socket.AF_INET
                gateway = T.GATEWAY6 if ":" in address else T.GATEWAY4
                client = socket_in(topo.sandbox, family, socket.SOCK_STREAM)
                clients.append(client)
                client.bind((address, 0))
                client.settimeout(scaled(10))
                client.connect((gateway, 53))

        def all_accepted() -> bool:
            ready, _, _ = select.select(list(listeners), [], [], 0.1)
            for sock in ready:
                try:
                    conn, peer = sock.accept()
                except BlockingIOError:
                    continue
                conn.close()
                accepted[str(peer[0])] = listeners[sock]
            assert len(accepted) == len(clients), f"accepted so far: {accepted}"
            return True

        eventually(all_accepted, timeout=10)
        expected = {address: PORTS[process_of(name, 2)] for name, pair in SOURCES.items() for address in pair}
        assert accepted == expected
    finally:
        for client in clients:
            client.close()
        _close(listeners)
