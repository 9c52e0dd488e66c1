"""egress.detect.pptp on real bytes: the control connection of tunnel/ndpi_pptp.pcap (../shared/corpus-tunnels,
192.168.43.22:41366 -> 191.101.61.1:1723), fed split at every offset and on other ports."""

from __future__ import annotations

import pytest

from egress.detect import pptp
from egress.detect.base import Category
from tests.detect.feeding import feed_every_split, feed_stream, meta

REQUEST = bytes.fromhex(
    "009c00011a2b3c4d00010000010000000000000300000003ffff00016c6f63616c000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000063616e616e69616e0000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
)
"""Start-Control-Connection-Request (156 bytes; host name "local", vendor "cananian")."""
REPLY = bytes.fromhex(
    "009c00011a2b3c4d00020000010001000000000200000003000000000000000000000000000000000000000000000000000000000000"
    "00000000000000000000000000000000000000000000000000000000000000000000000000004d6963726f736f667400000000000000"
    "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
)
"""Start-Control-Connection-Reply (vendor "Microsoft")."""


@pytest.mark.parametrize("port", [1723, 443, 8080])
def test_the_request_is_found_at_every_split(port: int) -> None:
    results = feed_every_split(pptp.detect, REQUEST, REPLY, meta(port))
    assert {(r.category, r.protocol) for r in results if r is not None} == {(Category.TUNNEL, "pptp")}
    assert None not in results
    assert len({r.evidence for r in results if r is not None}) == 1


def test_the_reply_alone_is_found() -> None:
    found = feed_stream(pptp.detect, b"", REPLY, meta(1723))
    assert found is not None and "Reply" in found.evidence


@pytest.mark.parametrize(
    "client",
    [
        b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        REQUEST[:4] + b"\x1a\x2b\x3c\x4e" + REQUEST[8:],  # wrong cookie
        REQUEST[:8] + b"\x00\x63" + REQUEST[10:],  # no such control message
        REQUEST[:11],
        b"\x16\x03\x01\x00\xa0\x01\x00\x00\x9c\x03\x03" + bytes(40),
    ],
)
def test_other_streams_are_not_pptp(client: bytes) -> None:
    assert feed_stream(pptp.detect, client, b"HTTP/1.1 200 OK\r\n\r\n", meta(1723)) is None
