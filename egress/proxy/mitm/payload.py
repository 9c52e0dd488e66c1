"""What a server reads out of an HTTP message: its body decoded as the server would (bounded), and the pieces a
server application decodes further (multipart parts, form and query values, Server-Sent Events data).

mitmproxy-free and pure (bytes in, bytes out); the addon hands what it returns to the detectors. Decoding is
bounded so that attacker bytes cost bounded memory: a body whose decoded size passes `DECODED_MAX` (a
decompression bomb, or just a large compressed upload) is cut off there and reported as a problem, and the addon
blocks what it cannot judge whole. The one gate of brotli and zstd (as mitmproxy decodes them: ``br``, ``zstd``).

Decisions (docs/security.md, "Decrypted traffic"):

- known encodings (RFC 9110 §8.4.1 and the IANA registry's ``br``, ``zstd``; ``x-gzip`` as gzip) are decoded in
  reverse order of application, each step bounded;
- a body that does not decode as declared (corrupt, trailing bytes after the last gzip member) is a problem: a
  lenient server may still decode something out of it, and egress cannot tell what;
- an encoding egress does not know (``compress``, ``x-bogus``...) is a problem too: the raw bytes are inspected
  anyway, but a server that accepts the header decodes them some way egress cannot see, which is exactly a channel
  past the detectors, and ordinary clients do not send request bodies in such encodings.
"""

from __future__ import annotations

import urllib.parse
import zlib
from dataclasses import dataclass
from typing import Final

import brotli  # type: ignore[import-untyped]
from backports import zstd

DECODED_MAX: Final = 8 * 1024 * 1024
"""Bytes a body may decode to. Past this the decoder stops (a decompression bomb costs at most this much memory)
and the body is a problem (`Decoded.problem`), judged unidentified, never passed uninspected."""
PIECES_MAX: Final = 64
"""Pieces (multipart parts, form values, events) taken from one body; the rest stay inside the whole body, which
is inspected too."""

IDENTITY: Final = frozenset({"", "identity", "none"})
KNOWN_ENCODINGS: Final = frozenset({"gzip", "x-gzip", "deflate", "br", "zstd"}) | IDENTITY


@dataclass(frozen=True, slots=True)
class Decoded:
    data: bytes
    """The body as the server reads it (or as far as it could be decoded)."""
    problem: str | None = None
    """Why the body cannot be judged whole as the server reads it: unknown encoding, corrupt, over the bound."""


class _Problem(Exception):
    """A decoding step failed; the message says why."""


def _gzip(data: bytes, limit: int) -> bytes:
    out = bytearray()
    while data:
        engine = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out += engine.decompress(data, limit + 1 - len(out))
        if len(out) > limit:
            raise _Problem(f"decodes to more than {limit} bytes")
        if not engine.eof:
            raise _Problem("truncated gzip member")
        data = engine.unused_data  # another member follows (RFC 1952 §2.2), or trailing bytes
    return bytes(out)


def _deflate(data: bytes, limit: int) -> bytes:
    # "deflate" is zlib-wrapped (RFC 9110 §8.4.1.2); some clients send raw deflate, which servers accept too.
    for wbits in (zlib.MAX_WBITS, -zlib.MAX_WBITS):
        engine = zlib.decompressobj(wbits)
        try:
            out = engine.decompress(data, limit + 1)
        except zlib.error:
            continue
        if len(out) > limit:
            raise _Problem(f"decodes to more than {limit} bytes")
        if not engine.eof or engine.unused_data:
            raise _Problem("truncated or trailing bytes in deflate data")
        return out
    raise _Problem("not deflate data")


def _brotli(data: bytes, limit: int) -> bytes:
    engine = brotli.Decompressor()
    try:
        out: bytes = engine.process(data, output_buffer_limit=limit + 1)
    except brotli.error as exc:
        raise _Problem(f"not brotli data ({exc})") from exc
    if len(out) > limit or (not engine.is_finished() and not engine.can_accept_more_data()):
        raise _Problem(f"decodes to more than {limit} bytes")
    if not engine.is_finished():
        raise _Problem("truncated brotli data")
    return out


def _zstd(data: bytes, limit: int) -> bytes:
    out = bytearray()
    while data:
        engine = zstd.ZstdDecompressor()
        try:
            out += engine.decompress(data, limit + 1 - len(out))
        except zstd.ZstdError as exc:
            raise _Problem(f"not zstd data ({exc})") from exc
        if len(out) > limit:
            raise _Problem(f"decodes to more than {limit} bytes")
        if not engine.eof:
            raise _Problem("truncated zstd frame")
        data = engine.unused_data
    return bytes(out)


_DECODERS = {"gzip": _gzip, "x-gzip": _gzip, "deflate": _deflate, "br": _brotli, "zstd": _zstd}


def decode(raw: bytes, content_encoding: str, limit: int = DECODED_MAX) -> Decoded:
    """``raw`` decoded through every coding of ``content_encoding`` (last applied first), each step bounded."""
    codings = [c.strip().lower() for c in content_encoding.split(",")]
    data = raw
    for coding in reversed(codings):
        if coding in IDENTITY:
            continue
        decoder = _DECODERS.get(coding)
        if decoder is None:
            return Decoded(data, f"unknown content-encoding {coding[:40]!r}")
        try:
            data = decoder(data, limit)
        except (_Problem, zlib.error, EOFError) as exc:
            return Decoded(data[:limit], f"{coding} body: {exc}")
    if len(data) > limit:
        return Decoded(data[:limit], f"body over {limit} bytes")
    return Decoded(data)


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
