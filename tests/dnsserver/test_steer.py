"""The steering program: each source reaches the socket of the first network it is in, in the policy's order.

Checked with `steer.run` (the program's own semantics, over many random networks against `ipaddress`) and in the
kernel: a reuseport group on loopback, datagrams sent from several 127/8 addresses (and ::1)."""

from __future__ import annotations

import ipaddress
import random
import socket
import struct

import pytest

from egress.dnsserver import steer
from egress.dnsserver.listen import attach_steering, open_udp
from tests.waiting import eventually

Net = ipaddress.ip_network


def _header(source: str) -> bytes:
    """A network header with ``source`` where the kernel has it (the rest zero)."""
    address = ipaddress.ip_address(source)
    if address.version == 4:
        return b"\x45" + bytes(11) + address.packed + bytes(4)
    return b"\x60" + bytes(7) + address.packed + bytes(16)


def _expected(routes: list[tuple[int, steer.Network]], source: str) -> int:
    address = ipaddress.ip_address(source)
    return next((index for index, network in routes if address in network), 0)


def test_the_first_network_a_source_is_in_names_its_socket() -> None:
    routes: list[tuple[int, steer.Network]] = [
        (1, Net("10.0.0.0/8")),
        (2, Net("10.1.0.0/16")),  # inside 1's: first match wins, as Policy.sandbox_for
        (3, Net("192.168.1.5/32")),
        (4, Net("fd00::/8")),  # the other family: not in the IPv4 program
    ]
    insns, left = steer.program(routes, 4)
    assert not left
    assert steer.run(insns, _header("10.1.2.3")) == 1
    assert steer.run(insns, _header("192.168.1.5")) == 3
    assert steer.run(insns, _header("192.168.1.6")) == 0
    assert steer.run(insns, _header("11.0.0.1")) == 0


def test_ipv6_prefixes_across_words_and_the_catch_all() -> None:
    routes: list[tuple[int, steer.Network]] = [
        (1, Net("fd00:203:1::2/128")),
        (2, Net("2001:db8:8000::/33")),
        (3, Net("2001:db8::/32")),
        (4, Net("::/0")),
    ]
    insns, _left = steer.program(routes, 6)
    assert steer.run(insns, _header("fd00:203:1::2")) == 1
    assert steer.run(insns, _header("fd00:203:1::3")) == 4
    assert steer.run(insns, _header("2001:db8:8000::1")) == 2
    assert steer.run(insns, _header("2001:db8:7fff::1")) == 3
    assert steer.run(insns, _header("2001:db9::1")) == 4


@pytest.mark.parametrize("version", [4, 6])
def test_random_networks_steer_as_the_policy_matches(version: int) -> None:
    rng = random.Random(version)
    bits = 32 if version == 4 else 128
    address: type[ipaddress.IPv4Address | ipaddress.IPv6Address]
    network_of: type[ipaddress.IPv4Network | ipaddress.IPv6Network]
    address, network_of = (
        (ipaddress.IPv4Address, ipaddress.IPv4Network)
        if version == 4
        else (ipaddress.IPv6Address, ipaddress.IPv6Network)
    )
    for _ in range(50):
        routes: list[tuple[int, steer.Network]] = []
        for index in range(1, rng.randint(2, 12)):
            prefix = rng.randint(0, bits) if rng.random() < 0.2 else rng.randint(bits - 16, bits)
            base = rng.getrandbits(bits) & ~((1 << (bits - prefix)) - 1) & ((1 << bits) - 1)
            routes.append((index, network_of((base, prefix))))
        insns, _left = steer.program(routes, version)
        for _ in range(40):
            index, network = rng.choice(routes)
            inside = int(network.network_address) | (rng.getrandbits(bits) & int(network.hostmask))
            for value in (inside, rng.getrandbits(bits)):
                source = str(address(value))
                assert steer.run(insns, _header(source)) == _expected(routes, source), (routes, source)


def test_a_program_past_the_kernels_limit_leaves_the_rest_to_socket_0() -> None:
    routes: list[tuple[int, steer.Network]] = [(n + 1, Net(f"10.{n // 256}.{n % 256}.0/24")) for n in range(2000)]
    insns, left = steer.program(routes, 4)
    assert len(insns) <= steer.MAX_INSNS
    assert left and left[0][0] > 1000
    kept = routes[: len(routes) - len(left)]
    assert steer.run(insns, _header("10.0.7.9")) == 8
    assert steer.run(insns, _header(str(kept[-1][1].network_address))) == kept[-1][0]
    assert steer.run(insns, _header(str(left[0][1].network_address))) == 0  # shared, still judged by source
    steer.encode(insns)  # the kernel's size


def test_encode_refuses_what_the_kernel_would() -> None:
    with pytest.raises(ValueError, match="1 to 4096"):
        steer.encode([])
    with pytest.raises(ValueError, match="1 to 4096"):
        steer.encode([(steer.RET_K, 0, 0, 0)] * (steer.MAX_INSNS + 1))
    assert len(steer.encode([(steer.RET_K, 0, 0, 0)])) == 8


def _group(host: str, count: int) -> list[socket.socket]:
    socks: list[socket.socket] = []
    port = 0
    for _ in range(count):
        sock, _size = open_udp(host, port, 65536)
        port = sock.getsockname()[1]
        sock.settimeout(5)
        socks.append(sock)
    return socks


def _arrived(socks: list[socket.socket]) -> dict[bytes, int]:
    """Which socket each waiting datagram reached (by its payload)."""
    seen: dict[bytes, int] = {}
    for index, sock in enumerate(socks):
        sock.setblocking(False)
        while True:
            try:
                seen[sock.recv(64)] = index
            except BlockingIOError:
                break
    return seen


def test_the_kernel_steers_loopback_sources_to_their_sockets() -> None:
    socks = _group("127.0.0.1", 3)
    try:
        routes: list[tuple[int, steer.Network]] = [(1, Net("127.0.0.2/32")), (2, Net("127.0.0.3/32"))]
        attach_steering(socks[0], steer.encode(steer.program(routes, 4)[0]))
        port = socks[0].getsockname()[1]
        for source in ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.9"):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.bind((source, 0))
                for n in range(5):  # several source ports: the steering is by address, not by hash
                    client.sendto(f"{source} {n}".encode(), ("127.0.0.1", port))

        want = {"127.0.0.1": 0, "127.0.0.2": 1, "127.0.0.3": 2, "127.0.0.9": 0}
        seen: dict[bytes, int] = {}

        def all_arrived() -> bool:
            seen.update(_arrived(socks))
            assert len(seen) == 20
            return True

        eventually(all_arrived)
        assert {payload: index for payload, index in seen.items()} == {
            f"{source} {n}".encode(): index for source, index in want.items() for n in range(5)
        }
    finally:
        for sock in socks:
            sock.close()


def test_the_kernel_steers_ipv6() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        socks = _group("::1", 2)
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")
    try:
        port = socks[0].getsockname()[1]
        for routes, want in (([(1, Net("::1/128"))], 1), ([(1, Net("fd00::/8"))], 0), ([(1, Net("::/64"))], 1)):
            attach_steering(socks[0], steer.encode(steer.program(routes, 6)[0]))
            with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as client:
                client.sendto(struct.pack("!H", want), ("::1", port))

            seen = eventually(lambda: _arrived(socks) or None)
            assert seen == {struct.pack("!H", want): want}, routes
    finally:
        for sock in socks:
            sock.close()
