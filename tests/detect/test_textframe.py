"""`egress.detect.textframe`: which datagrams leave a text message open (held by the UDP gate), and which never do."""

from __future__ import annotations

import os
import random

import pytest

from egress.detect.textframe import BOM, Frame, frame
from tests.detect.test_datagrams import dtls, quic, stratum, stun, wireguard, xmrig

GETWORK = (
    b"POST / HTTP/1.1\r\nHost: 127.0.0.1:8332\r\nContent-Type: application/json\r\nContent-Length: 44\r\n\r\n"
    b'{"method":"getwork","params":[],"id":"json"}'
)
MESSAGES = {
    "stratum": stratum(),
    "xmrig": xmrig(),
    "getwork": GETWORK,
    "xmrig-no-newline": xmrig().rstrip(b"\n"),
    # red team 12: openings the pool detectors read (junk before the bracket skipped, NULs dropped)
    "stratum-after-junk": b"x" + stratum(),
    "stratum-after-comment": b"/* c */ " + stratum(),
    "xmrig-after-a-string": b'"s" ' + xmrig(),
    "stratum-utf16": stratum().decode().encode("utf-16-le"),
    "xmrig-utf32": xmrig().decode().encode("utf-32-le"),
}
OPENS_AT = {"stratum-after-junk": 1, "stratum-after-comment": 8, "xmrig-after-a-string": 4}
"""Where the message's bracket is: the prefixes before it hold no message yet."""


@pytest.mark.parametrize("name", list(MESSAGES))
def test_every_proper_prefix_of_a_pool_message_is_open_and_the_whole_is_not(name: str) -> None:
    message = MESSAGES[name]
    tail = len(message) - len(message.rstrip(b"\n\x00"))  # the newline (and its NULs) ends the message
    for cut in range(OPENS_AT.get(name, 0) + 1, len(message) - tail):
        assert frame(message[:cut]) is Frame.OPEN, (name, cut, message[:cut])
    assert frame(message) is Frame.WHOLE


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"   \t\r\n" + b'{"id":1,', Frame.OPEN),  # leading whitespace is skipped, as JSON parsers do
        (BOM + b'{"id":1,', Frame.OPEN),
        (BOM + BOM + b"  [1, {", Frame.OPEN),
        (b'{"a":1}\n{"id":2,"meth', Frame.OPEN),  # a whole message, then the next one's first piece
        (b'{"a":1}{"b":', Frame.OPEN),
        (b'{"s":"}}}]]]","t":', Frame.OPEN),  # brackets inside strings do not close
        (b'{"s":"\\"}', Frame.OPEN),  # nor does an escaped quote end the string
        (b'{"s":"\\\\"}', Frame.WHOLE),  # an escaped backslash, then the quote that ends the string
        (b"log line\n[", Frame.OPEN),  # a line that is no message, then a message's start
        (b"PO", Frame.OPEN),  # a request line cut in its method
        (b"GET / HTTP/1.1\r\nHost: x\r\n", Frame.OPEN),
        (b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345", Frame.OPEN),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", Frame.WHOLE),
        (b'{"id":1,"method":"ping"}', Frame.WHOLE),  # a whole JSON datagram (GELF, JSON logs) without a newline
        (b'{"a":1}\n', Frame.WHOLE),
        (b"", Frame.WHOLE),
        (b"   ", Frame.WHOLE),
        # a bracket after junk opens a value (the detectors skip junk before it): red team 12
        (b"<34>1 2026-12-02T12:00:00Z host app - - - a syslog line { unclosed", Frame.OPEN),
        (b'<34>1 2026-12-02T12:00:00Z host app - - - {"k":"v"}', Frame.WHOLE),
        (b'x{"id":1,', Frame.OPEN),
        (b'/* { */ {"id":1,', Frame.OPEN),
        (b'"s" {"id":1,', Frame.OPEN),
        (b'x{"a":1}', Frame.WHOLE),
        (b"{'a':'}',\"method\":\"lo", Frame.OPEN),  # JSON5's single-quoted string holds the bracket
        (b'{/* } */ "id":1,', Frame.OPEN),  # so does a comment
        (b'{"a":1, // }\n "id":2,', Frame.OPEN),
        (b'{"a":"it\'s"}', Frame.WHOLE),  # an apostrophe inside a double-quoted string is no quote
        (b'{"id":1}"method":"lo', Frame.OPEN),  # a value, then more of its line, unfinished
        (b'{"id":1} trailing\n', Frame.WHOLE),
        (b'{"a":1}{"b":2}', Frame.WHOLE),
        (b'{"a":1} {"b":', Frame.OPEN),
        (b'{"a":1} // done\n', Frame.WHOLE),
        ('{"id":1,'.encode("utf-16"), Frame.OPEN),  # UTF-16 and UTF-32 read as their ASCII
        ('{"id":1}'.encode("utf-32"), Frame.WHOLE),
        (b"metric.name:1|c", Frame.WHOLE),  # statsd
        (b"M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n", Frame.WHOLE),  # SSDP: not a method read here
        (b"INVITE sip:bob@example.com SIP/2.0\r\nVia: x\r\n", Frame.WHOLE),  # SIP likewise
        (b'{"id":1,\x00', Frame.OPEN),  # NULs dropped, as the detectors drop them
        (b'{"id":1,\x00\x01', Frame.BINARY),
        (b"{\x01", Frame.BINARY),
    ],
)
def test_frames(data: bytes, expected: Frame) -> None:
    assert frame(data) is expected


def _dns_query() -> bytes:
    # a random id (either byte may be "{" or "["), flags RD, one question for example.com A IN
    return os.urandom(2) + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"


def _rtp() -> bytes:
    return b"\x80\x00" + os.urandom(10) + os.urandom(160)  # version 2, PCMU, 20 ms


def _quic_short() -> bytes:
    return bytes([0x40 | random.randrange(64)]) + os.urandom(1199)  # the fixed bit: "[" and "{" among them


@pytest.mark.parametrize(
    "make", [_dns_query, stun, wireguard, dtls, quic, _rtp, _quic_short], ids=lambda f: f.__name__.strip("_")
)
def test_binary_protocols_are_never_held(make: object) -> None:
    assert callable(make)
    for _ in range(500):
        assert frame(make()) is not Frame.OPEN


def test_a_dns_query_whose_id_starts_like_json_is_binary() -> None:
    assert frame(b'{"' + _dns_query()[2:]) is Frame.BINARY
