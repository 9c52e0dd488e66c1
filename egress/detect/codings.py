"""HTTP content codings undone as a server undoes them, bounded: the one decoder of message bodies that the proxy
(`egress.proxy.mitm.payload`) and the scanner's HTTP path (`egress.detect.jsonrpc`) share, so both judge the same
bytes. The gate of the codec libraries brotli and zstd (as mitmproxy decodes them: ``br``, ``zstd``); each is used
when it is installed, and a body in a coding whose codec is missing is a problem like an unknown coding.

Decisions (docs/security.md, "Decrypted traffic"):

- known codings (RFC 9110 §8.4.1 and the IANA registry's ``br``, ``zstd``; ``x-gzip`` as gzip) are decoded in
  reverse order of application, each step bounded by ``limit``: a body that would decode past it (a decompression
  bomb, or just a large compressed body) is cut there and reported as a problem, never held whole;
- a body that does not decode as declared (corrupt, trailing bytes after the last gzip member) is a problem: a
  lenient server may still decode something out of it, and egress cannot tell what;
- an unknown coding (``compress``, ``x-bogus``...) is a problem too: a server that accepts the header decodes the
  bytes some way egress cannot see, which is exactly a channel past the detectors;
- ``partial``: the body is a prefix (a capture's or the engine's cap cut it), so a coded stream that simply stops
  is no problem: what decoded so far is returned, and only corrupt bytes, unknown codings and the bound are.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Final

brotli: ModuleType | None
try:
    import brotli  # type: ignore[import-untyped,no-redef,unused-ignore]
except ImportError:  # pragma: no cover - installed with mitmproxy; the scanner may run without it
    brotli = None
zstd: ModuleType | None
try:
    from backports import zstd  # type: ignore[no-redef,unused-ignore]
except ImportError:  # pragma: no cover - Python 3.14 has compression.zstd; without either, zstd is a problem
    zstd = None

DECODED_MAX: Final = 8 * 1024 * 1024
"""Default bound on what a body may decode to (the proxy's): a bomb costs at most this much memory."""

IDENTITY: Final = frozenset({"", "identity", "none"})
KNOWN_ENCODINGS: Final = frozenset({"gzip", "x-gzip", "deflate", "br", "zstd"}) | IDENTITY


@dataclass(frozen=True, slots=True)
class Decoded:
    data: bytes
    """The body as the server reads it (or as far as it could be decoded)."""
    problem: str | None = None
    """Why the body cannot be judged whole as the server reads it: unknown coding, corrupt, over the bound."""


class _Problem(Exception):
    """A decoding step failed; the message says why. ``data``: what decoded before it failed."""

    def __init__(self, why: str, data: bytes = b"") -> None:
        super().__init__(why)
        self.data = data


Decoder = Callable[[bytes, int, bool], bytes]
"""(coded bytes, limit, partial) -> decoded bytes, or `_Problem`."""


def _over(limit: int, out: bytes | bytearray) -> _Problem:
    return _Problem(f"decodes to more than {limit} bytes", bytes(out[:limit]))


def _gzip(data: bytes, limit: int, partial: bool) -> bytes:
    out = bytearray()
    while data:
        engine = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out += engine.decompress(data, limit + 1 - len(out))
        except zlib.error as exc:
            raise _Problem(f"not gzip data ({exc})", bytes(out)) from exc
        if len(out) > limit:
            raise _over(limit, out)
        if not engine.eof:
            if partial:
                return bytes(out)
            raise _Problem("truncated gzip member", bytes(out))
        data = engine.unused_data  # another member follows (RFC 1952 §2.2), or trailing bytes
    return bytes(out)


def _deflate(data: bytes, limit: int, partial: bool) -> bytes:
    # "deflate" is zlib-wrapped (RFC 9110 §8.4.1.2); some clients send raw deflate, which servers accept too.
    for wbits in (zlib.MAX_WBITS, -zlib.MAX_WBITS):
        engine = zlib.decompressobj(wbits)
        try:
            out = engine.decompress(data, limit + 1)
        except zlib.error:
            continue
        if len(out) > limit:
            raise _over(limit, out)
        if engine.unused_data or (not engine.eof and not partial):
            raise _Problem("truncated or trailing bytes in deflate data", out)
        return out
    raise _Problem("not deflate data")


def _brotli(data: bytes, limit: int, partial: bool) -> bytes:
    if brotli is None:
        raise _Problem("no brotli decoder installed")
    engine = brotli.Decompressor()
    try:
        out: bytes = engine.process(data, output_buffer_limit=limit + 1)
    except brotli.error as exc:
        raise _Problem(f"not brotli data ({exc})") from exc
    if len(out) > limit or (not engine.is_finished() and not engine.can_accept_more_data()):
        raise _over(limit, out)
    if not engine.is_finished() and not partial:
        raise _Problem("truncated brotli data", out)
    return out


def _zstd(data: bytes, limit: int, partial: bool) -> bytes:
    if zstd is None:
        raise _Problem("no zstd decoder installed")
    out = bytearray()
    while data:
        engine = zstd.ZstdDecompressor()
        try:
            out += engine.decompress(data, limit + 1 - len(out))
        except zstd.ZstdError as exc:
            raise _Problem(f"not zstd data ({exc})", bytes(out)) from exc
        if len(out) > limit:
            raise _over(limit, out)
        if not engine.eof:
            if partial:
                return bytes(out)
            raise _Problem("truncated zstd frame", bytes(out))
        data = engine.unused_data
    return bytes(out)


_DECODERS: Final[dict[str, Decoder]] = {
    "gzip": _gzip,
    "x-gzip": _gzip,
    "deflate": _deflate,
    "br": _brotli,
    "zstd": _zstd,
}


def decode(raw: bytes, content_encoding: str, limit: int = DECODED_MAX, partial: bool = False) -> Decoded:
    """``raw`` decoded through every coding of ``content_encoding`` (last applied first), each step bounded.

    On a problem, ``data`` is what the failing step decoded before it failed when that is anything (a bomb's
    first ``limit`` bytes, a corrupt stream's readable start), else the step's input: the caller inspects it and
    judges the problem."""
    codings = [c.strip().lower() for c in content_encoding.split(",")]
    data = raw
    for coding in reversed(codings):
        if coding in IDENTITY:
            continue
        decoder = _DECODERS.get(coding)
        if decoder is None:
            return Decoded(data[:limit], f"unknown content-encoding {coding[:40]!r}")
        try:
            data = decoder(data, limit, partial)
        except (_Problem, zlib.error, EOFError) as exc:
            got = exc.data if isinstance(exc, _Problem) else b""
            return Decoded((got or data)[:limit], f"{coding} body: {exc}")
    if len(data) > limit:
        return Decoded(data[:limit], f"body over {limit} bytes")
    return Decoded(data)
