"""HTTP/1.x message heads from a stream prefix: the request line or status line and the header fields.

A pure parser shared by the detectors (CONNECT, WebSocket upgrade, JSON-RPC over HTTP) and the proxy. Syntax per
RFC 9112 §2-§5: a start line, header field lines ``name: value``, and an empty line; bare LF line ends are accepted
(RFC 9112 §2.2 allows a recipient to). Field names are lowercased and repeated fields are joined with ``", "``
(RFC 9110 §5.3). Bodies are not parsed: ``body_offset`` says where the body starts in the prefix.

Public surface:

- `looks_like_http_request(prefix)` / `looks_like_http_response(prefix)`: cheap tests on the first bytes.
- `parse_request(prefix)` / `parse_response(prefix)`: a frozen head, ``None`` when the bytes are not HTTP/1.x, or
  `MORE` while the head is incomplete (up to `HEAD_MAX` bytes).

Each parse keeps its last answer with the very bytes object it read (`_last_request`): the detectors of one flow all ask
about the same ``view.client`` in turn (upgrade, CONNECT, circumvention, names, the opaque-stream test), and a
second ask of the same object costs one identity test. Bytes are immutable, so the same object reads the same.
A flow's whole request head is kept in its view's memo (`request_of`): the detectors that run at every longer
prefix of an HTTP flow (``upgrade``) read it once, not once per segment (the one-object memo above is another
flow's by then).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from egress.detect.base import MORE, FlowView, _More

HEAD_MAX = 8192
"""A head longer than this is not taken for HTTP (common server limits are 8 KiB)."""

METHODS = frozenset(
    {b"GET", b"POST", b"PUT", b"HEAD", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE"}
    | {b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK", b"UNLOCK", b"REPORT", b"SEARCH"}
)
"""RFC 9110 §9 methods plus the WebDAV ones (RFC 4918 §9, RFC 3253 §3.6, RFC 5323 §2)."""

_LONGEST_METHOD = max(len(m) for m in METHODS)
_TOKEN_BYTES = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
"""RFC 9110 §5.6.2 tchar: a field name is made of these only (tested in C: `bytes.translate` deletes them)."""


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    target: str
    version: str
    """``HTTP/1.0`` or ``HTTP/1.1``."""
    headers: Mapping[str, str]
    """Lowercased field names to values."""
    body_offset: int
    """Index in the prefix of the first byte after the head."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    version: str
    status: int
    reason: str
    headers: Mapping[str, str]
    body_offset: int


def looks_like_http_request(prefix: bytes) -> bool:
    """True when the prefix starts with a known method and a space (``GET /``); needs the method's bytes."""
    space = prefix.find(b" ", 0, _LONGEST_METHOD + 1)
    return space > 0 and prefix[:space] in METHODS


def looks_like_http_response(prefix: bytes) -> bool:
    """True when the prefix starts with ``HTTP/1.``."""
    return prefix.startswith(b"HTTP/1.")


def _could_become(prefix: bytes, request: bool) -> bool:
    """True when a prefix too short to judge can still grow into a request (response) start line."""
    if request:
        return any(m.startswith(prefix) for m in METHODS) or looks_like_http_request(prefix)
    return b"HTTP/1."[: len(prefix)] == prefix[:7]


def _head(prefix: bytes) -> tuple[list[bytes], int] | None | _More:
    """Split the head into lines; (lines, body_offset)."""
    end = prefix.find(b"\n\n", 0, HEAD_MAX)
    crlf = prefix.find(b"\r\n\r\n", 0, HEAD_MAX)
    if crlf >= 0 and (end < 0 or crlf < end):
        body = crlf + 4
    elif end >= 0:
        body = end + 2
    else:
        return None if len(prefix) >= HEAD_MAX else MORE
    lines = [line.rstrip(b"\r") for line in prefix[:body].split(b"\n")]
    return [line for line in lines if line], body


def _fields(lines: list[bytes]) -> dict[str, str] | None:
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or name.translate(None, _TOKEN_BYTES):
            return None
        key = name.decode("ascii").lower()
        text = value.strip().decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


_last_request: list[tuple[object, HttpRequest | None | _More]] = [(object(), None)]
"""`parse_request`'s last (input bytes object, answer), one item swapped whole: a reader in another thread sees a
matching pair."""
_last_response: list[tuple[object, HttpResponse | None | _More]] = [(object(), None)]


def parse_request(prefix: bytes) -> HttpRequest | None | _More:
    """The request head at the start of a client stream prefix."""
    last = _last_request[0]
    if last[0] is prefix:
        return last[1]
    answer = _parse_request(prefix)
    _last_request[0] = (prefix, answer)
    return answer


def parse_response(prefix: bytes) -> HttpResponse | None | _More:
    """The response head at the start of a server stream prefix."""
    last = _last_response[0]
    if last[0] is prefix:
        return last[1]
    answer = _parse_response(prefix)
    _last_response[0] = (prefix, answer)
    return answer


REQUEST_MEMO = "egress.detect.http"
"""The key of a view's memo (`FlowView.memo`) under which `request_of` keeps the client's whole request head."""


def request_of(view: FlowView) -> HttpRequest | None | _More:
    """``parse_request(view.client)``, read once per view: a whole request head (an `HttpRequest`) is the same
    for every longer prefix of the stream, so it is kept in the view's memo and the detectors that ask at each
    prefix (``upgrade``, CONNECT, circumvention, WebSocket) parse it once. Why it is the same: the start line's
    method is read from the first bytes; the head ends at the first blank line (``\\n\\n`` or ``\\r\\n\\r\\n``,
    searched within `HEAD_MAX`), and a blank line found in a prefix stays the first in any longer one (one that
    only more bytes complete starts after it). `None` and `MORE` are not kept (`MORE` changes with more bytes).
    tests/detect/test_http_memo.py holds it to `parse_request` at every prefix of generated and corpus streams."""
    kept = view.memo.get(REQUEST_MEMO)
    if isinstance(kept, HttpRequest):
        return kept
    request = parse_request(view.client)
    if isinstance(request, HttpRequest):
        view.memo[REQUEST_MEMO] = request
    return request


def _parse_request(prefix: bytes) -> HttpRequest | None | _More:
    if not looks_like_http_request(prefix):
        return MORE if len(prefix) <= _LONGEST_METHOD and _could_become(prefix, True) else None
    head = _head(prefix)
    if not isinstance(head, tuple):
        return head
    lines, body = head
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1.") or not parts[1]:
        return None
    headers = _fields(lines[1:])
    if headers is None:
        return None
    method, target, version = (part.decode("latin-1") for part in parts)
    return HttpRequest(method, target, version, headers, body)


def _parse_response(prefix: bytes) -> HttpResponse | None | _More:
    if not looks_like_http_response(prefix):
        return MORE if len(prefix) < 7 and _could_become(prefix, False) else None
    head = _head(prefix)
    if not isinstance(head, tuple):
        return head
    lines, body = head
    version, _, rest = lines[0].partition(b" ")
    code, _, reason = rest.partition(b" ")
    if len(code) != 3 or not code.isdigit():
        return None
    headers = _fields(lines[1:])
    if headers is None:
        return None
    return HttpResponse(version.decode("latin-1"), int(code), reason.decode("latin-1"), headers, body)
