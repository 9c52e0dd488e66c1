"""DHCP for the sandboxes from a server on the gateway (`GatewaySettings.dhcp`, ``gateway run --dhcp``), in
namespaces (root): a stand-in DHCP server in the gateway namespace listens as dnsmasq does (UDP sockets on 67 and
547), a client in the sandbox sends what a real one sends: a DISCOVER from 0.0.0.0 to 255.255.255.255 (an
AF_PACKET frame, as dhclient and udhcpc send it), a renewal from its leased address to the gateway, a DHCPv6
SOLICIT from its link-local address to ff02::1:2.

With the setting each arrives and nothing else opens (another port, another destination from 0.0.0.0); without it
each is dropped and logged (spoof or guard), as before. Every "dropped" is judged by its log line, not by time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import select
import socket
import struct
from collections.abc import Iterator

import pytest

from egress.capture.nflog import NflogReader, in_netns
from egress.nft import runner
from egress.nft.render import GatewaySettings, render
from egress.policy.model import Policy
from tests.nft import make_sandbox
from tests.nft.netns import Topology, run, socket_in, topology
from tests.nft.test_runner import expect_log
from tests.waiting import eventually, scaled

pytestmark = pytest.mark.root

T = Topology
GROUP = 7
WAIT = 5.0
ALL_SERVERS = "ff02::1:2"


@dataclasses.dataclass(frozen=True, slots=True)
class Lab:
    topo: Topology
    reader: NflogReader
    sandbox_end: str
    """The sandbox's own end of the sandbox link."""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with topology() as topo:
        names = in_netns(topo.sandbox, socket.if_nameindex)
        [sandbox_end] = [name for _, name in names if name != "lo"]
        with NflogReader(netns=topo.gateway).open(GROUP) as reader:
            yield Lab(topo, reader, sandbox_end)


def _apply(lab: Lab, dhcp: bool) -> None:
    settings = GatewaySettings(
        sandbox_if=lab.topo.sandbox_if, uplink_if=lab.topo.uplink_if, nflog_group=GROUP, dhcp=dhcp
    )
    policy = Policy(1, (make_sandbox("agents", "10.77.0.0/26", "fd77::/120"),))
    runner.apply(render(policy, settings), netns=lab.topo.gateway)
    lab.reader.read()  # nothing left over from an earlier test


def _checksum(data: bytes) -> int:
    padded = data + b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(padded) // 2}H", padded))
    total = (total >> 16) + (total & 0xFFFF)
    return int(~(total + (total >> 16)) & 0xFFFF)


def _from_nowhere(lab: Lab, dport: int, payload: bytes) -> None:
    """A UDP datagram from 0.0.0.0:68 to 255.255.255.255:``dport``, sent as a DHCP client without an address sends
    it: a whole frame on the link, to the broadcast MAC."""
    udp = struct.pack("!HHHH", 68, dport, 8 + len(payload), 0) + payload  # checksum 0: none (IPv4 allows it)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes(4), b"\xff" * 4)
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    with socket_in(lab.topo.sandbox, socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800)) as sock:
        sock.sendto(header + udp, (lab.sandbox_end, 0x0800, 0, 0, b"\xff" * 6))


@contextlib.contextmanager
def _server4(lab: Lab) -> Iterator[socket.socket]:
    """What dnsmasq opens for DHCPv4: UDP 0.0.0.0:67, broadcasts allowed."""
    with socket_in(lab.topo.gateway, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.bind(("0.0.0.0", 67))
        yield sock


@contextlib.contextmanager
def _server6(lab: Lab) -> Iterator[socket.socket]:
    """What a DHCPv6 server opens: UDP [::]:547, joined to All_DHCP_Relay_Agents_and_Servers on the sandbox link."""
    with socket_in(lab.topo.gateway, socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.bind(("::", 547))
        index = in_netns(lab.topo.gateway, lambda: socket.if_nametoindex(lab.topo.sandbox_if))
        group = socket.inet_pton(socket.AF_INET6, ALL_SERVERS) + struct.pack("@I", index)
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, group)
        yield sock


def _received(sock: socket.socket, wait: float = WAIT) -> bytes | None:
    """The next datagram, waiting up to ``wait`` (scaled) seconds; None if none came."""
    if not select.select([sock], [], [], scaled(wait))[0]:
        return None
    return sock.recv(2048)


def _link_local(lab: Lab) -> str:
    """The sandbox's link-local address, once usable (duplicate address detection done)."""

    def ready() -> str:
        out = run(lab.topo.sandbox, "ip", "-6", "-o", "addr", "show", "dev", lab.sandbox_end, "scope", "link")
        assert out and "tentative" not in out, f"no usable link-local address yet: {out!r}"
        return out.split()[3].split("/")[0]

    return eventually(ready, timeout=scaled(10), interval=0.05)


def _solicit(lab: Lab, dport: int = 547, sport: int = 546) -> None:
    index = in_netns(lab.topo.sandbox, lambda: socket.if_nametoindex(lab.sandbox_end))
    with socket_in(lab.topo.sandbox, socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.bind((_link_local(lab), sport, 0, index))
        sock.sendto(b"\x01solicit", (ALL_SERVERS, dport, 0, index))


def _renew(lab: Lab, dport: int = 67) -> None:
    with socket_in(lab.topo.sandbox, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((T.SANDBOX4, 68))
        sock.sendto(b"renew", (T.GATEWAY4, dport))


@pytest.mark.parametrize("dhcp", [True, False], ids=["dhcp", "closed"])
def test_a_discover_from_no_address(lab: Lab, dhcp: bool) -> None:
    _apply(lab, dhcp)
    with _server4(lab) as server:
        _from_nowhere(lab, 67, b"discover")
        if dhcp:
            assert _received(server) == b"discover"
        else:
            expect_log(lab.reader, "egress spoof", "255.255.255.255", 17)
            assert _received(server, wait=0) is None  # the log line above is its drop


@pytest.mark.parametrize("dhcp", [True, False], ids=["dhcp", "closed"])
def test_a_renewal_from_the_leased_address(lab: Lab, dhcp: bool) -> None:
    _apply(lab, dhcp)
    with _server4(lab) as server:
        _renew(lab)
        if dhcp:
            assert _received(server) == b"renew"
        else:
            expect_log(lab.reader, "egress guard", T.GATEWAY4, 17)
            assert _received(server, wait=0) is None  # the log line above is its drop


@pytest.mark.parametrize("dhcp", [True, False], ids=["dhcp", "closed"])
def test_a_dhcpv6_solicit(lab: Lab, dhcp: bool) -> None:
    _apply(lab, dhcp)
    with _server6(lab) as server:
        _solicit(lab)
        if dhcp:
            assert _received(server) == b"\x01solicit"
        else:
            expect_log(lab.reader, "egress spoof", ALL_SERVERS, 17)
            assert _received(server, wait=0) is None  # the log line above is its drop


def test_dhcp_opens_nothing_else(lab: Lab) -> None:
    """With the setting: 0.0.0.0 to another port, a sandbox to another port of the gateway, a link-local source to
    another port of ff02::1:2 are still dropped and logged."""
    _apply(lab, True)
    _from_nowhere(lab, 69, b"tftp")
    expect_log(lab.reader, "egress spoof", "255.255.255.255", 17)
    _renew(lab, dport=69)
    expect_log(lab.reader, "egress guard", T.GATEWAY4, 17)
    _solicit(lab, dport=548)
    expect_log(lab.reader, "egress spoof", ALL_SERVERS, 17)
