"""What a server reads out of an HTTP message: its body decoded as the server would (bounded), and the pieces a
server application decodes further (multipart parts, form and query values, Server-Sent Events data).

mitmproxy-free and pure (bytes in, bytes out); the addon hands what it returns to the detectors. The decoding of
content codings is `egress.detect.codings`, shared with the scanner's HTTP path so that both judge the same bytes;
a body whose decoded size passes `DECODED_MAX` (a decompression bomb, or just a large compressed upload) is cut off
there and reported as a problem, and the addon blocks what it cannot judge whole (docs/security.md, "Decrypted
traffic").
"""

from __future__ import annotations

import urllib.parse
from typing import Final

from egress.detect.codings import DECODED_MAX, IDENTITY, KNOWN_ENCODINGS, Decoded, decode

PIECES_MAX: Final = 64
"""Pieces (multipart parts, form values, events) taken from one body; the rest stay inside the whole body, which
is inspected too."""

__all__ = ["DECODED_MAX", "IDENTITY", "KNOWN_ENCODINGS", "PIECES_MAX", "Decoded", "decode", "form_values", "pieces"]


def _multipart(body: bytes, content_type: str) -> list[bytes]:
    boundary = _parameter(content_type, "boundary")
    if not boundary:
        return []
    pieces: list[bytes] = []
    for part in body.split(b"--" + boundary.encode("latin-1"))[1 : PIECES_MAX + 1]:
        head_end = part.find(b"\r\n\r\n")
        if head_end >= 0:
            pieces.append(part[head_end + 4 :].removesuffix(b"\r\n"))
    return pieces


def _parameter(content_type: str, name: str) -> str:
    for item in content_type.split(";")[1:]:
        key, _, value = item.strip().partition("=")
        if key.strip().lower() == name:
            return value.strip().strip('"')
    return ""


def form_values(encoded: bytes) -> list[bytes]:
    """Values of ``a=1&b=2`` (an urlencoded form or a query string), percent- and plus-decoded, as a server's
    form parser reads them."""
    pairs = urllib.parse.parse_qsl(encoded.decode("latin-1"), keep_blank_values=True, max_num_fields=None)
    return [value.encode("latin-1", "replace") for _, value in pairs[:PIECES_MAX] if value]


def _events(body: bytes) -> list[bytes]:
    """Server-Sent Events: the ``data`` fields of each event joined by newlines (the HTML standard's event-stream
    interpretation, §9.2.6), which is what the page's script receives."""
    pieces: list[bytes] = []
    data: list[bytes] = []
    for line in body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"):
        if not line:
            if data:
                pieces.append(b"\n".join(data))
                data = []
                if len(pieces) >= PIECES_MAX:
                    return pieces
            continue
        field, _, value = line.partition(b":")
        if field == b"data":
            data.append(value.removeprefix(b" "))
    if data:
        pieces.append(b"\n".join(data))
    return pieces


def pieces(body: bytes, content_type: str) -> list[bytes]:
    """What a server application decodes out of a (decoded) body beyond the body itself, by its media type."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media.startswith("multipart/"):
        return _multipart(body, content_type)
    if media == "application/x-www-form-urlencoded":
        return form_values(body)
    if media == "text/event-stream":
        return _events(body)
    return []
