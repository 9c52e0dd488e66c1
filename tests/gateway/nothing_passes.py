"""Ground truth for "nothing passes" in the sandbox ── gateway ── internet namespaces of tests/nft/netns.py: a
capture on the internet side (an AF_PACKET socket, every frame of the namespace) while the sandbox tries TCP, UDP,
DNS and ICMP, over IPv4 and IPv6, towards the internet side.

Judged by the capture, never by time: after the attempts, the gateway host itself sends a marker datagram over
the same link (one per IP family); once both are in the capture, every earlier packet the gateway forwarded would
be there too (one link, in order; an IPv6 packet waiting for neighbour discovery waits in the queue its marker
joins). What counts as leaked is any frame whose IP source is in a sandbox network.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

from tests.nft.netns import Topology, socket_in
from tests.waiting import eventually, scaled

ETH_P_ALL = 0x0003
SANDBOX_NETS = (ipaddress.ip_network("10.77.0.0/24"), ipaddress.ip_network("fd77::/64"))
MARKER = b"egress-nothing-passes-marker"
UDP_PORT, TCP_PORT = 9931, 9932


def echo_request(payload: bytes, ident: int = 0x4567) -> bytes:
    """An ICMP echo request carrying ``payload`` (a raw socket leaves the checksum to us)."""
    header = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
    data = header + payload
    padded = data + b"\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(padded) // 2}H", padded))
    total = (total >> 16) + (total & 0xFFFF)
    checksum = ~(total + (total >> 16)) & 0xFFFF
    return header[:2] + struct.pack("!H", checksum) + header[4:] + payload


def dns_query(name: str) -> bytes:
    """A DNS A query for ``name`` (recursion desired)."""
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))
    return b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + labels + b"\x00\x00\x01\x00\x01"


PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}


def _source(frame: bytes) -> tuple[str, str] | None:
    """The IP source address and protocol of an Ethernet frame (None for anything else, e.g. ARP)."""
    kind = frame[12:14]
    if kind == b"\x08\x00" and len(frame) >= 34:
        return socket.inet_ntop(socket.AF_INET, frame[26:30]), PROTOCOLS.get(frame[23], str(frame[23]))
    if kind == b"\x86\xdd" and len(frame) >= 54:
        return socket.inet_ntop(socket.AF_INET6, frame[22:38]), PROTOCOLS.get(frame[20], str(frame[20]))
    return None


@dataclass
class Capture:
    """Every frame the internet namespace sees, from the moment it is made."""

    sock: socket.socket
    frames: list[bytes] = field(default_factory=list)

    def _read(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while True:
                self.frames.append(self.sock.recv(65536))

    def until_marker(self, t: Topology) -> list[bytes]:
        """Send the marker from the gateway host, read until it is in, and return every frame read so far."""
        # One per family: a forwarded IPv6 packet may wait for neighbour discovery, in the queue the marker joins.
        markers = [MARKER + b"-v4", MARKER + b"-v6"]
        for family, address, marker in (
            (socket.AF_INET, Topology.INTERNET4, markers[0]),
            (socket.AF_INET6, Topology.INTERNET6, markers[1]),
        ):
            with socket_in(t.gateway, family, socket.SOCK_DGRAM) as host:
                host.sendto(marker, (address, UDP_PORT))

        def marked() -> bool:
            self._read()
            missing = [m for m in markers if not any(m in frame for frame in self.frames)]
            assert not missing, f"markers not arrived yet: {missing}"
            return True

        eventually(marked, timeout=scaled(30), interval=0.05)
        return self.frames

    def leaked(self, t: Topology) -> list[tuple[str, str]]:
        """After the marker: (source, protocol) of each frame from a sandbox address (empty when nothing passed)."""
        found = []
        for frame in self.until_marker(t):
            source = _source(frame)
            if source is not None and any(ipaddress.ip_address(source[0]) in net for net in SANDBOX_NETS):
                found.append(source)
        return found


@contextlib.contextmanager
def capture(t: Topology) -> Iterator[Capture]:
    sock = socket_in(t.internet, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.setblocking(False)
        yield Capture(sock)
    finally:
        sock.close()


ALL_KINDS = {("v4", "tcp"), ("v4", "udp"), ("v4", "icmp"), ("v6", "tcp"), ("v6", "udp"), ("v6", "icmpv6")}
"""What `attempt` sends, as `kinds` names it: what the positive control must see when all is forwarded."""


def kinds(leaked: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """The (family, protocol) pairs among `Capture.leaked`'s frames."""
    return {("v6" if ":" in source else "v4", protocol) for source, protocol in leaked}


def attempt(t: Topology) -> None:
    """One round of the sandbox trying to reach the internet side: TCP, UDP, DNS to the upstream resolver and an
    ICMP echo, each over IPv4 and IPv6. Nothing is awaited: what matters is what leaves the gateway."""
    for family, address in ((socket.AF_INET, Topology.INTERNET4), (socket.AF_INET6, Topology.INTERNET6)):
        with socket_in(t.sandbox, family, socket.SOCK_STREAM) as tcp:
            tcp.setblocking(False)
            tcp.connect_ex((address, TCP_PORT))  # the SYN is sent; no need to wait for an answer
        with socket_in(t.sandbox, family, socket.SOCK_DGRAM) as udp:
            udp.sendto(b"egress-udp-attempt", (address, UDP_PORT))
            udp.sendto(dns_query("example.com"), (address, 53))
        proto, payload = (
            (socket.IPPROTO_ICMP, echo_request(b"egress-icmp-attempt"))
            if family == socket.AF_INET
            else (socket.IPPROTO_ICMPV6, b"\x80\x00\x00\x00\x45\x67\x00\x01egress-icmp-attempt")
        )
        with socket_in(t.sandbox, family, socket.SOCK_RAW, proto) as icmp:
            icmp.sendto(payload, (address, 0))  # the kernel fills in an ICMPv6 checksum itself
