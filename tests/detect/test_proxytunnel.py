"""Tests for egress.detect.proxytunnel: SOCKS4/4a, SOCKS5 and HTTP CONNECT."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress.detect import proxytunnel
from egress.detect.base import Category
from tests.detect.feeding import feed_every_split, feed_stream, meta

H = bytes.fromhex
# tunnel/ndpi_socks.pcap: SOCKS5 with greeting and request pipelined (10.0.0.1:1637 -> 10.0.0.2:21477).
SOCKS5_PIPELINED = (H("050100050100030e7777772e676f6f676c652e636f6d0050474554202f20"), H("0500050000010a000002"))
# tunnel/ndpi_socks.pcap: SOCKS4 (53533 -> :1080) and SOCKS4a (53534 -> :1080).
SOCKS4 = (H("040100505db8d87700474554202f20485454502f312e31"), H("005adfb20ab49cf9"))
SOCKS4A = (H("0401005000000001007777772e6578616d706c652e636f6d00474554202f20"), H("005adfb30ab49cf9"))
# tunnel/ndpi_shadowsocks.pcap: curl to the local ss-local SOCKS5 port (127.0.0.1:37904 -> :1080).
SS_LOCAL = (H("0502000105010001805f9bc60050"), H("05000500000100000000101048"))
# tunnel/ndpi_http_connect.pcap (192.168.1.103:1714 -> 192.168.1.146:8080), head cut after the Host field.
CONNECT = (
    b"CONNECT apache.org:443 HTTP/1.1\r\nProxy-Connection: keep-alive\r\nHost: apache.org:443\r\n\r\n\x16\x03\x01",
    b"HTTP/1.0 200 Connection Established\r\nProxy-agent: Apache/2.4.41 (Ubuntu)\r\n\r\n\x16\x03\x03\x00",
)


@pytest.mark.parametrize(
    ("client", "server", "protocol", "evidence"),
    [
        (*SOCKS5_PIPELINED, "socks5", "SOCKS5 CMD 1 www.google.com:80"),
        (SOCKS5_PIPELINED[0], b"", "socks5", "SOCKS5 CMD 1 www.google.com:80"),
        (*SOCKS4, "socks4", "SOCKS4 CONNECT 93.184.216.119:80"),
        (*SOCKS4A, "socks4", "SOCKS4 CONNECT www.example.com:80"),
        (SOCKS4A[0], b"", "socks4", "SOCKS4 CONNECT www.example.com:80"),
        (*SS_LOCAL, "socks5", "SOCKS5 CMD 1 128.95.155.198:80"),
        (*CONNECT, "http-connect", "CONNECT apache.org:443 HTTP/1.1"),
        (CONNECT[0], b"", "http-connect", "CONNECT apache.org:443 HTTP/1.1"),
        (
            CONNECT[0],
            b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
            "http-connect",
            "CONNECT apache.org:443 HTTP/1.1",
        ),
        (H("050100"), H("0502"), "socks5", "SOCKS5 greeting methods 00 sent to 198.51.100.7:1080"),
        (H("050100"), b"", "socks5", "SOCKS5 greeting methods 00 sent to 198.51.100.7:1080"),
        (H("05020002"), b"", "socks5", "SOCKS5 greeting methods 0002 sent to 198.51.100.7:1080"),
        (H("04010050c633640700"), b"", "socks4", "SOCKS4 CONNECT 198.51.100.7:80"),  # curl --socks4: empty user id
        (H("040101bb000000010065766972792e6578616d706c6500"), b"", "socks4", "SOCKS4 CONNECT eviry.example:443"),
    ],
)
def test_tunnels(client: bytes, server: bytes, protocol: str, evidence: str) -> None:
    """Found whatever the segmentation; the evidence is that of the whole greeting arriving at once (a split
    that ends after a SOCKS5 greeting gives the greeting's evidence, before the request names the target)."""
    results = feed_every_split(proxytunnel.detect, client, server, meta(1080))
    for result in results:
        assert result is not None
        assert (result.category, result.protocol, result.detector) == (Category.TUNNEL, protocol, "proxytunnel")
    found = feed_stream(proxytunnel.detect, client, server, meta(1080))
    assert found is not None
    assert found.evidence == evidence


def test_socks5_greeting_answered_before_request() -> None:
    found = feed_stream(proxytunnel.detect, H("050100"), H("0500"), meta(1080), close=False)
    assert found is not None
    assert found.protocol == "socks5"


@pytest.mark.parametrize(
    ("client", "server"),
    [
        (b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n"),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b""),
        (SOCKS4[0], b"HTTP/1.1 400 Bad Request\r\n\r\n"),
        (H("0401005001020304"), H("005a000000000000")),  # no NUL after the user id: truncated request
        (H("04010050010203040000"), b""),  # SOCKS4 without user id, unanswered: too weak
        (H("0501000501"), H("0502")),  # server picked a method the client did not offer
        (H("04010050000000000000"), b""),  # SOCKS4 to 0.0.0.0
        (H("0501fe0a"), b""),  # a greeting, then a byte that starts no request
        (H("05010a"), b""),  # method 0a is not assigned
        (H("05020000"), b""),  # duplicate methods
        (H("0501000501000700"), b""),  # bad ATYP
        (H("0400"), b""),
        (b"", b"220 ftp ready\r\n"),
    ],
)
def test_no_finding(client: bytes, server: bytes) -> None:
    assert feed_stream(proxytunnel.detect, client, server, meta(1080)) is None


@given(st.binary(max_size=80), st.binary(max_size=40))
def test_arbitrary_bytes_never_raise(client: bytes, server: bytes) -> None:
    for prefix in (b"", b"\x04\x01", b"\x05\x02\x00\x02", b"CONNECT "):
        feed_stream(proxytunnel.detect, prefix + client, server, meta(1080))
