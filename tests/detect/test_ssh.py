"""Tests for egress.detect.ssh: SSH identification strings off port 22."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress.detect import ssh
from egress.detect.base import Category, FlowMeta
from tests.detect.feeding import feed_every_split, feed_stream, meta
from tests.detect.ssh_traces import OPENSSH_CLIENT, OPENSSH_SERVER

# tunnel/zeek_ssh_ssh-on-port-80.pcap, flow 172.16.238.1:49656 -> 172.16.238.131:80.
PORT80_CLIENT = b"SSH-2.0-OpenSSH_5.2\r\n\x00\x00\x03\x14\x08\x14"
PORT80_SERVER = b"SSH-2.0-OpenSSH_5.8p1 Debian-1ubuntu3\r\n"
# tunnel/ndpi_ssh.pcap, flow 127.0.0.1:58496 -> 127.0.0.1:8000.
PORT8000_CLIENT = b"SSH-2.0-OpenSSH_8.2p1 Ubuntu-4ubuntu0.11\r\n\x00\x00\x05\xfc"
PORT8000_SERVER = b"SSH-2.0-APACHE-SSHD-2.5.0\r\n\x00\x00\x04"
# benign/ndpi_ssh_unidirectional.pcap, flow 192.168.2.198:50306 -> 192.168.2.1:22.
PORT22_CLIENT = b"\r\n"
PORT22_SERVER = b"SSH-2.0-OpenSSH_7.4p1 Debian-10+deb9u7\nProtocol mismatch.\n"


@pytest.mark.parametrize(
    ("client", "server", "port", "banner"),
    [
        (PORT80_CLIENT, PORT80_SERVER, 80, "SSH-2.0-OpenSSH_5.2"),
        (PORT8000_CLIENT, PORT8000_SERVER, 8000, "SSH-2.0-OpenSSH_8.2p1 Ubuntu-4ubuntu0.11"),
        (PORT8000_CLIENT, b"", 8000, "SSH-2.0-OpenSSH_8.2p1 Ubuntu-4ubuntu0.11"),
        (PORT22_CLIENT, PORT22_SERVER, 2222, "SSH-2.0-OpenSSH_7.4p1 Debian-10+deb9u7"),
        (b"SSH-1.99-Cisco-1.25\r\n", b"", 443, "SSH-1.99-Cisco-1.25"),
    ],
)
def test_ssh_off_port_22(client: bytes, server: bytes, port: int, banner: str) -> None:
    results = feed_every_split(ssh.detect, client, server, meta(port))
    assert all(result == results[0] for result in results)
    found = results[0]
    assert found is not None
    assert (found.category, found.protocol, found.detector) == (Category.TUNNEL, "ssh-nonstandard-port", "ssh")
    assert found.evidence == banner


@pytest.mark.parametrize(
    ("client", "server", "flow"),
    [
        (PORT22_CLIENT, PORT22_SERVER, meta(22)),
        (PORT80_CLIENT, PORT80_SERVER, meta(22)),
        (PORT80_CLIENT, PORT80_SERVER, meta(50000, sport=22)),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n", meta(80)),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"", meta(443)),
        (b"", b"220 smtp.example.org ESMTP\r\n", meta(25)),
        (b"SSH-3.0-x\r\n", b"", meta(80)),
        (b"SSH-2.0", b"", meta(80)),
    ],
)
def test_no_finding(client: bytes, server: bytes, flow: FlowMeta) -> None:
    assert feed_stream(ssh.detect, client, server, flow) is None


@given(st.binary(max_size=64), st.binary(max_size=64), st.integers(0, 65535))
def test_arbitrary_bytes_never_raise(client: bytes, server: bytes, port: int) -> None:
    feed_stream(ssh.detect, client, server, meta(port))


# Reverse SSH: the roles inverted (egress.detect.ssh.detect_reverse), on real bytes (tests/detect/ssh_traces.py).
def _kexinit_packet(kex: bytes) -> bytes:
    """A KEXINIT binary packet (RFC 4253 §7.1) whose kex_algorithms name-list is ``kex``; the other lists short."""
    lists = [kex, b"ssh-ed25519", b"aes128-ctr", b"aes128-ctr", b"hmac-sha2-256", b"hmac-sha2-256"]
    lists += [b"none", b"none", b"", b""]
    body = b"\x14" + bytes(range(16)) + b"".join(len(x).to_bytes(4) + x for x in lists) + b"\x00" + bytes(4)
    padding = 8 - (len(body) + 5) % 8 + 8
    return (len(body) + padding + 1).to_bytes(4) + bytes([padding]) + body + bytes(padding)


MODERN_CLIENT = b"SSH-2.0-OpenSSH_9.6\r\n" + _kexinit_packet(
    b"curve25519-sha256,ext-info-c,kex-strict-c-v00@openssh.com"
)
MODERN_SERVER = b"SSH-2.0-OpenSSH_9.6\r\n" + _kexinit_packet(b"curve25519-sha256,kex-strict-s-v00@openssh.com")


@pytest.mark.parametrize("port", [22, 443, 2222])
@pytest.mark.parametrize(
    ("client", "server"), [(OPENSSH_CLIENT, OPENSSH_SERVER), (MODERN_CLIENT, MODERN_SERVER)], ids=["gex", "strict"]
)
def test_ordinary_ssh_has_its_roles_at_every_split(port: int, client: bytes, server: bytes) -> None:
    assert feed_every_split(ssh.detect_reverse, client, server, meta(port)) == [None] * (len(client) + 1)


@pytest.mark.parametrize("port", [22, 443, 2222])
@pytest.mark.parametrize(
    ("client", "server"), [(OPENSSH_CLIENT, OPENSSH_SERVER), (MODERN_CLIENT, MODERN_SERVER)], ids=["gex", "strict"]
)
def test_the_connecting_side_serving_ssh_is_reverse_ssh_at_every_split(port: int, client: bytes, server: bytes) -> None:
    """The TCP client sends the SSH server's key exchange: the bytes of the real server, from the side that
    connected (what an implant that dials out and then serves a shell sends)."""
    results = feed_every_split(ssh.detect_reverse, server, client, meta(port))
    assert {(r.category, r.protocol) for r in results if r is not None} == {(Category.TUNNEL, "ssh-reverse")}
    assert None not in results and len({r.evidence for r in results if r is not None}) == 1


@pytest.mark.parametrize(("client", "server"), [(OPENSSH_SERVER, b""), (b"", OPENSSH_CLIENT), (MODERN_SERVER, b"")])
def test_one_side_is_enough_to_show_the_inversion(client: bytes, server: bytes) -> None:
    found = feed_stream(ssh.detect_reverse, client, server, meta(22))
    assert found is not None and found.protocol == "ssh-reverse"


@pytest.mark.parametrize(
    ("client", "server"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", OPENSSH_SERVER),
        (b"SSH-2.0-x\r\n\xff\xff\xff\xff junk", OPENSSH_CLIENT),  # no SSH framing after the banner
        (OPENSSH_CLIENT[:40], b""),
    ],
)
def test_what_is_not_inverted_ssh_is_left_alone(client: bytes, server: bytes) -> None:
    assert feed_stream(ssh.detect_reverse, client, server, meta(22)) is None
