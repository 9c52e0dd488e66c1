"""Whether a UDP flow's datagrams end inside an unfinished text message, the framing the pool detectors read. Pure.

The UDP gate (`egress.gateway.udpgate`) holds the verdict on a datagram that opens a text message it cannot read
whole yet, so that the first pieces of a JSON-RPC message cut over several datagrams (Stratum's ``mining.*``,
XMRig's ``login``: newline-framed JSON, egress/detect/stratum.py, jsonrpc.py) or of an HTTP request (getwork's
``POST``, egress/detect/getwork.py) do not reach the server before the joined message has been judged.

A datagram counts as text when it has no control byte other than tab, CR and LF (bytes >= 0x80 are let in, so a
cut inside a UTF-8 character still counts). Binary protocols never qualify: DNS carries a flags byte and counts
(a zero byte) in its first 12 bytes, STUN, WireGuard, DTLS and QUIC long headers start with a byte below 0x20 or
a zero, RTP's and QUIC short headers' random bytes hold control bytes at once in any realistic datagram.
Messages start after leading whitespace and UTF-8 byte-order marks (what JSON parsers skip) at a message boundary:
the start of the text, the end of the previous message, or a new line after a line that is no message.
"""

from __future__ import annotations

import enum
import re
from typing import Final

BOM: Final = b"\xef\xbb\xbf"
METHODS: Final = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"OPTIONS ", b"PATCH ", b"DELETE ", b"CONNECT ")
"""HTTP request lines the getwork detector reads (RFC 9110 §9), with their space."""

_CONTROL: Final = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACE: Final = b" \t\r\n"
_JSON_MARKS: Final = re.compile(rb'[][{}"\\]')
_HEAD_END: Final = re.compile(rb"\r?\n\r?\n")
_LENGTH: Final = re.compile(rb"(?im)^content-length[ \t]*:[ \t]*(\d{1,9})[ \t]*\r?$")


class Frame(enum.Enum):
    OPEN = "open"
    """Text ending inside a message it opened: a JSON value not yet closed, an HTTP request not yet whole."""
    WHOLE = "whole"
    """Text whose messages are all whole (or that opens none)."""
    BINARY = "binary"
    """Not text."""


def frame(data: bytes) -> Frame:
    """Where ``data`` (a flow's held datagrams joined, from a message boundary) ends."""
    if _CONTROL.search(data):
        return Frame.BINARY
    at, size = 0, len(data)
    while True:
        at = _boundary(data, at)
        if at >= size:
            return Frame.WHOLE
        if data[at] in b"{[":
            end = _json_end(data, at)
        elif any(data.startswith(method, at) for method in METHODS):
            end = _http_end(data, at)
        elif any(method.startswith(data[at:]) for method in METHODS):
            return Frame.OPEN  # a request line cut inside its method: "PO" | "ST / HTTP/1.1..."
        else:
            newline = data.find(b"\n", at)  # a line that is no message: the next line may open one
            if newline < 0:
                return Frame.WHOLE
            end = newline + 1
        if end is None:
            return Frame.OPEN
        at = end


def _boundary(data: bytes, at: int) -> int:
    size = len(data)
    while at < size:
        if data[at] in _SPACE:
            at += 1
        elif data.startswith(BOM, at):
            at += len(BOM)
        else:
            break
    return at


def _json_end(data: bytes, at: int) -> int | None:
    """Where the JSON value opening at ``at`` ends (after its closing bracket), or None while it is open. Counts
    brackets outside strings only: a malformed value is judged by the detectors, not here."""
    depth, inside, escaped_at = 0, False, -1
    for found in _JSON_MARKS.finditer(data, at):
        index, byte = found.start(), data[found.start()]
        if inside:
            if index == escaped_at:
                continue
            if byte == 0x5C:  # backslash: the next byte is escaped
                escaped_at = index + 1
            elif byte == 0x22:
                inside = False
        elif byte == 0x22:
            inside = True
        elif byte in b"{[":
            depth += 1
        elif byte in b"}]":
            depth -= 1
            if depth <= 0:
                return index + 1
    return None


def _http_end(data: bytes, at: int) -> int | None:
    """Where the HTTP request opening at ``at`` ends (its head, and its body by ``Content-Length``), or None."""
    head = _HEAD_END.search(data, at)
    if head is None:
        return None
    length = _LENGTH.search(data, at, head.start() + 1)
    end = head.end() + (int(length.group(1)) if length else 0)
    return end if end <= len(data) else None


__all__ = ["BOM", "METHODS", "Frame", "frame"]
