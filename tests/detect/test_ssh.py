"""Tests for egress.detect.ssh: SSH identification strings off port 22."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress.detect import ssh
from egress.detect.base import Category, FlowMeta
from tests.detect.feeding import feed_every_split, feed_stream, meta

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
