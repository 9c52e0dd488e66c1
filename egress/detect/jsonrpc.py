"""Cheap helpers shared by the JSON-RPC based detectors (Stratum v1, CryptoNote, Ethereum stratum, getwork, nodes).

Pool and node protocols put JSON-RPC 1.0/2.0 objects (https://www.jsonrpc.org/specification) on the wire either as
newline-delimited messages on a raw TCP stream (Stratum, see https://braiins.com/stratum-v1/docs), concatenated
frame payloads handed in by the WebSocket/TLS unwrappers, or as HTTP/1.x message bodies (RFC 9112: ``Content-Length``
or ``chunked`` framing). This module turns one direction's byte prefix into the JSON-bearing text to search, and
reads ``"method"`` values by scanning for the key instead of parsing whole documents: the prefix is usually
truncated, and a key scan costs a few ``bytes.find`` calls however much JSON there is.

`drive` is the common decision loop: a flow whose first non-blank byte is neither ``{``/``[`` nor the start of an
HTTP message is rejected on the first call, so TLS, SSH and binary protocols cost one comparison.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from egress.detect.base import MORE, Finding, FlowView, Result

SCAN_LIMIT: Final = 8 * 1024
"""Bytes of each direction searched. Logins, subscriptions and the first jobs all sit well inside this."""

MAX_METHODS: Final = 32
"""``"method"`` keys read per direction, which bounds the Python-level work per call."""

MAX_HTTP_MESSAGES: Final = 8
_RESYNC_WINDOW: Final = 1024
_HTTP_STARTS: Final = (b"POST ", b"GET ", b"PUT ", b"HTTP/1.", b"OPTIONS ", b"PATCH ", b"HEAD ", b"DELETE ")
_BLANK: Final = b" \t\r\n"
_METHOD_KEY: Final = b'"method"'


class Kind(enum.Enum):
    EMPTY = "empty"
    """Nothing (or only blanks, or an incomplete HTTP head) yet."""
    JSON = "json"
    """The direction carries JSON text (raw stream or HTTP bodies)."""
    NOT = "not"
    """The direction cannot be JSON-RPC."""


@dataclass(frozen=True, slots=True)
class Payload:
    """One direction of a flow, reduced to what JSON-RPC detectors look at."""

    kind: Kind
    text: bytes = b""
    """The JSON-bearing bytes: the stream itself, or the HTTP bodies that start with ``{``/``[`` joined by newlines."""
    heads: tuple[bytes, ...] = ()
    """HTTP header blocks (request or status line included), for header-based signatures."""
    exhausted: bool = False
    """The direction reached `SCAN_LIMIT`: more bytes will not be searched."""
    final: bool = False
    """No more bytes will be searched (flow complete or `SCAN_LIMIT` reached): a trailing partial message counts."""


def _first_solid(data: bytes) -> int:
    for index, byte in enumerate(data):
        if byte not in _BLANK:
            return index
    return -1


def _is_http_start(data: bytes) -> bool:
    return any(data.startswith(start) or start.startswith(data) for start in _HTTP_STARTS)


def _http(data: bytes) -> Payload:
    """Split pipelined HTTP/1.x messages into header blocks and JSON bodies (tolerant to a truncated tail)."""
    heads: list[bytes] = []
    bodies: list[bytes] = []
    pos = 0
    first_is_json: bool | None = None
    while pos < len(data) and len(heads) < MAX_HTTP_MESSAGES:
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            break
        head = data[pos:end]
        heads.append(head)
        pos = end + 4
        lowered = head.lower()
        length = _content_length(lowered)
        chunked = b"chunked" in lowered
        if chunked:
            body, pos, whole = _dechunk(data, pos)
        elif length is not None:
            body, pos = data[pos : pos + length], pos + length
            whole = pos <= len(data)
        elif head.startswith(b"HTTP/"):
            body, pos, whole = data[pos:], len(data), False
        else:
            body, whole = b"", True
        solid = _first_solid(body)
        if solid >= 0 and body[solid] in b"{[":
            # A body known to be whole ends its last message, as a newline does on a raw stream.
            bodies.append(body[solid:].rstrip() + b"\n" if whole else body[solid:])
        if first_is_json is None:
            if solid >= 0:
                first_is_json = body[solid] in b"{["
            elif length == 0 or not (chunked or length or head.startswith(b"HTTP/")):
                first_is_json = False
    exhausted = len(data) >= SCAN_LIMIT
    if first_is_json is None and not bodies:
        return Payload(Kind.NOT if exhausted else Kind.EMPTY, heads=tuple(heads), exhausted=exhausted)
    kind = Kind.JSON if first_is_json or bodies else Kind.NOT
    text = b"".join(body if body.endswith(b"\n") else body + b"\n" for body in bodies[:-1])
    return Payload(kind, text + (bodies[-1] if bodies else b""), tuple(heads), exhausted)


def _content_length(lowered_head: bytes) -> int | None:
    at = lowered_head.find(b"\ncontent-length:")
    if at < 0:
        return None
    line_end = lowered_head.find(b"\r", at + 16)
    digits = lowered_head[at + 16 : line_end if line_end >= 0 else None].strip()
    return int(digits) if digits.isdigit() and len(digits) < 10 else None


def _dechunk(data: bytes, pos: int) -> tuple[bytes, int, bool]:
    """Join the chunks of a chunked body at ``pos``: (body, next offset, whether the last chunk was seen)."""
    parts: list[bytes] = []
    for _ in range(64):
        line_end = data.find(b"\r\n", pos, pos + 20)
        if line_end < 0:
            break
        try:
            size = int(data[pos:line_end].split(b";")[0].strip(), 16)
        except ValueError:
            break
        pos = line_end + 2
        if size == 0:
            trailer = data.find(b"\r\n", pos)
            return b"".join(parts), len(data) if trailer < 0 else trailer + 2, True
        parts.append(data[pos : pos + size])
        pos += size + 2
        if pos >= len(data):
            break
    return b"".join(parts), len(data), False


@functools.lru_cache(maxsize=256)
def payload(data: bytes, complete: bool = False) -> Payload:
    """Classify one direction's prefix and extract its JSON-bearing text; ``complete``: no more bytes will come.

    Memoised: the five mining detectors and the crypto-node detector ask for the same prefix in turn (the same
    bytes object, whose hash Python caches), so it is split once per flow step instead of six times.
    """
    found = _payload(data)
    if complete or found.exhausted:
        return Payload(found.kind, found.text, found.heads, found.exhausted, final=True)
    return found


def _payload(data: bytes) -> Payload:
    exhausted = len(data) >= SCAN_LIMIT
    data = data[:SCAN_LIMIT]
    solid = _first_solid(data)
    if solid < 0:
        return Payload(Kind.EMPTY, exhausted=exhausted)
    first = data[solid]
    if first in b"{[":
        return Payload(Kind.JSON, data[solid:], exhausted=exhausted)
    rest = data[solid:]
    if first in b"GPHODT" and _is_http_start(rest[:8]):
        return _http(rest) if len(rest) >= 8 else Payload(Kind.EMPTY)
    if 0x20 <= first < 0x7F:
        # A capture that starts mid-message: resynchronise on the next line that opens an object.
        resync = rest.find(b"\n{", 0, _RESYNC_WINDOW)
        if resync >= 0:
            return Payload(Kind.JSON, rest[resync + 1 :], exhausted=exhausted)
        if len(rest) < _RESYNC_WINDOW and b"\n" not in rest:
            return Payload(Kind.EMPTY)
    return Payload(Kind.NOT, exhausted=exhausted)


def methods(text: bytes, limit: int = MAX_METHODS) -> list[tuple[str, int]]:
    """The string values of ``"method"`` keys in ``text``, with the offset of each key, in order."""
    found: list[tuple[str, int]] = []
    pos = text.find(_METHOD_KEY)
    while pos >= 0 and len(found) < limit:
        value = string_after(text, pos + len(_METHOD_KEY))
        if value is not None:
            found.append((value, pos))
        pos = text.find(_METHOD_KEY, pos + len(_METHOD_KEY))
    return found


def string_after(text: bytes, pos: int, max_len: int = 96) -> str | None:
    """Read ``: "value"`` at ``pos`` (just after a key), or None if no complete short string is there."""
    end = len(text)
    while pos < end and text[pos] in _BLANK:
        pos += 1
    if pos >= end or text[pos] != 0x3A:  # ':'
        return None
    pos += 1
    while pos < end and text[pos] in _BLANK:
        pos += 1
    if pos >= end or text[pos] != 0x22:  # '"'
        return None
    close = text.find(b'"', pos + 1, pos + 2 + max_len)
    if close < 0:
        return None
    return text[pos + 1 : close].decode("ascii", "replace")


def has_key(text: bytes, key: bytes) -> bool:
    """Whether ``"key"`` followed by a colon occurs in ``text`` (a key, not a string value)."""
    quoted = b'"' + key + b'"'
    pos = text.find(quoted)
    while pos >= 0:
        after = text[pos + len(quoted) : pos + len(quoted) + 4].lstrip(_BLANK)
        if after[:1] == b":":
            return True
        pos = text.find(quoted, pos + 1)
    return False


def message_at(text: bytes, offset: int, final: bool = True, span: int = 2048) -> bytes | None:
    """The whole message around ``offset``, or None while it is still arriving (unless ``final``).

    A message runs from the previous newline or ``}{`` boundary to the next one; one that ends the text counts
    once it closes all its braces. Only complete messages are reported, so a finding's evidence does not depend
    on where the stream was split. Messages longer than ``span`` either side are cut at ``span``.
    """
    low = max(0, offset - span)
    start = max(text.rfind(b"\n", low, offset), text.rfind(b"}{", low, offset))
    start = start + 1 if start >= 0 else low
    high = offset + span
    end = text.find(b"\n", offset, high)
    joined = text.find(b"}{", offset, high)
    if joined >= 0 and (end < 0 or joined < end):
        end = joined + 1
    if end >= 0:
        return text[start:end]
    if len(text) >= high:
        return text[start:high]
    message = text[start:]
    if final or (message.rstrip().endswith(b"}") and message.count(b"{") == message.count(b"}")):
        return message
    return None


Matcher = Callable[[Payload, Payload], Finding | None]
"""Looks at both directions (client, server) and returns a finding or None."""


def drive(view: FlowView, match: Matcher) -> Result:
    """The shared decision loop: reject non-JSON flows at once, match, and give up once both sides are searched."""
    client = payload(view.client, view.complete)
    if client.kind is Kind.NOT and not client.heads:
        return None
    server = payload(view.server, view.complete)
    if server.kind is Kind.NOT and not server.heads and client.kind is not Kind.JSON:
        return None
    if client.kind is Kind.EMPTY and server.kind is Kind.EMPTY and not (client.heads or server.heads):
        return None if view.complete else MORE
    finding = match(client, server)
    if finding is not None:
        return finding
    if view.complete:
        return None
    sides = [side for side in (client, server) if side.kind is not Kind.EMPTY]
    if any(side.kind is Kind.NOT for side in sides):
        return None
    if sides and all(side.exhausted or len(methods(side.text)) >= MAX_METHODS for side in sides):
        return None
    return MORE
