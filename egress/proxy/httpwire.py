"""HTTP/1.1 framing for the front's plain-HTTP fast path (`egress.proxy.httpfast`): pure, no I/O.

A request is taken only when it is in the small, unambiguous subset this module accepts in full; anything else is
`UNSURE` and the connection goes, with that request unread, to mitmproxy, which reads it as it always did. The
subset: ``METHOD /origin-form HTTP/1.1`` (not ``//``, ``/\\`` or ``/%2f%2f``: an authority to lenient servers),
every line ended by CRLF (no bare CR or LF), no line folding (obs-fold), token header names, printable ASCII
values, exactly one ``Host`` (a name, optionally a port), at most one ``Content-Length`` (digits, at most
`BODY_MAX`) and the whole body present, and none of ``Transfer-Encoding``, ``Upgrade``, ``Expect``,
``Content-Encoding``. So a request that two parsers could frame differently (CL and TE together, two lengths, a
folded line, a bare LF: request smuggling) never meets the fast path's own parser.

Responses cannot be handed back (their request went out): `parse_response` frames what the lab and ordinary
servers send (Content-Length, chunked without chunk extensions, or until close) and says `UNSURE` for the rest,
which the relay answers with a 502 and a close, never forwarding what it could not frame.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from egress.proxy import authority

HEAD_MAX: Final = 16 * 1024
"""Bytes a request or response head may take (the gate's `HEAD_WAIT_LIMIT`)."""
BODY_MAX: Final = 64 * 1024
"""Bytes of a request body the fast path takes (it must be peekable whole: the socket's receive buffer holds it)."""


class _Signal:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


MORE: Final = _Signal("MORE")
"""Not enough bytes yet."""
UNSURE: Final = _Signal("UNSURE")
"""Outside the subset the fast path takes: mitmproxy's (a request) or a 502 (a response)."""

_METHODS: Final = frozenset({b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"})
_REQUEST_LINE: Final = re.compile(rb"([A-Z]{3,7}) (/(?![/\\])[!-~]*) HTTP/1\.1")
"""An origin-form target that does not start with two of ``/`` and ``\\``: lenient servers read those as an
authority (red team 9), which mitmproxy's request hook judges (`egress.proxy.authority`)."""
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9])(?: ([\t -~]*))?")
_FIELD: Final = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([!-~](?:[\t -~]*[!-~])?)?[ \t]*")
_HOST: Final = re.compile(rb"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,252})(?::[0-9]{1,5})?")
_REFUSED_FIELDS: Final = frozenset({"transfer-encoding", "upgrade", "expect", "content-encoding"})
_LENGTH: Final = re.compile(rb"\r\n[Cc][Oo][Nn][Tt][Ee][Nn][Tt]-[Ll][Ee][Nn][Gg][Tt][Hh]:[ \t]*([0-9]{1,15})[ \t]*\r\n")
_CHUNK_SIZE: Final = re.compile(rb"([0-9A-Fa-f]{1,8})")
"""A chunk's size line: hex digits only. A chunk extension (``;name=value``) is refused, not skipped: the relay
forwards the server's bytes as they came, so an extension it dropped from what it judges would reach the client
unjudged (red team 8: a pool's job in ``2;{...}``). No ordinary server sends one; a refused response is a 502."""


@dataclass(frozen=True, slots=True)
class Request:
    """One request head the fast path may take, and its body (whole)."""

    method: str
    target: str
    host: str
    """The Host header's name, lowercased, without port or trailing dot (as the gate reads it)."""
    port: str
    """The Host header's port as it came (``""`` when none): one other than the connection's is mitmproxy's to
    refuse (`egress.proxy.authority.port_differs`)."""
    fields: tuple[tuple[str, str], ...]
    body: bytes
    size: int
    """Bytes the request takes on the wire (head and body): exactly what is consumed and forwarded."""
    close: bool
    """The client asked to close after this exchange (``Connection: close``)."""


@dataclass(frozen=True, slots=True)
class Response:
    """One whole response: its head's fields, its body as the client reads it (chunked framing undone)."""

    status: int
    reason: str
    fields: tuple[tuple[str, str], ...]
    body: bytes
    trailers: tuple[tuple[str, str], ...]
    size: int
    """Bytes it takes on the wire."""
    close: bool
    """The connection ends after it (``Connection: close``, or a body delimited by the close)."""


def _lines(head: bytes) -> list[bytes] | None:
    """The head's lines, or None when a CR or LF appears other than as a CRLF line end."""
    if head.count(b"\n") != head.count(b"\r\n") or head.count(b"\r") != head.count(b"\r\n"):
        return None
    return head.split(b"\r\n")


def _fields(lines: list[bytes]) -> tuple[tuple[str, str], ...] | None:
    fields = []
    for line in lines:
        match = _FIELD.fullmatch(line)  # a leading space or tab (obs-fold) does not match a token
        if match is None:
            return None
        fields.append((match[1].decode("ascii"), (match[2] or b"").decode("ascii")))
    return tuple(fields)


def _values(fields: tuple[tuple[str, str], ...], name: str) -> list[str]:
    return [value for key, value in fields if key.lower() == name]


def _closes(fields: tuple[tuple[str, str], ...]) -> bool:
    return any(
        token.strip().lower() == "close" for value in _values(fields, "connection") for token in value.split(",")
    )


def parse_request(data: bytes) -> Request | _Signal:
    """The request at the start of ``data`` (peeked, so possibly followed by pipelined ones), `MORE`, or
    `UNSURE`."""
    space = data.find(b" ", 0, 8)
    if (space < 0 and len(data) >= 8) or (space >= 0 and data[:space] not in _METHODS):
        return UNSURE  # not a method we take (TLS, another protocol, CONNECT): no need to wait for a head
    end = data.find(b"\r\n\r\n", 0, HEAD_MAX)
    head = data[: end if end >= 0 else HEAD_MAX]
    if end < 0 and head.endswith(b"\r"):
        head = head[:-1]  # a CRLF still arriving
    lines = _lines(head)
    if lines is None:
        return UNSURE
    if end < 0:
        return MORE if len(data) < HEAD_MAX else UNSURE
    start = _REQUEST_LINE.fullmatch(lines[0])
    if start is None or start[1] not in _METHODS or (b"%" in start[2][:9] and _authority(start[2])):
        return UNSURE
    fields = _fields(lines[1:])
    if fields is None:
        return UNSURE
    names = {name.lower() for name, _ in fields}
    if names & _REFUSED_FIELDS:
        return UNSURE
    hosts = _values(fields, "host")
    if len(hosts) != 1 or _HOST.fullmatch(hosts[0].encode()) is None:
        return UNSURE
    lengths = _values(fields, "content-length")
    if len(lengths) > 1 or (lengths and (not lengths[0].isdigit() or int(lengths[0]) > BODY_MAX)):
        return UNSURE
    if any("upgrade" in value.lower() for value in _values(fields, "connection")):
        return UNSURE
    length = int(lengths[0]) if lengths else 0
    size = end + 4 + length
    if len(data) < size:
        return MORE
    host, _, port = hosts[0].partition(":")
    method, target = start[1].decode("ascii"), start[2].decode("ascii")
    return Request(method, target, host.lower().rstrip("."), port, fields, data[end + 4 : size], size, _closes(fields))


def _authority(target: bytes) -> bool:
    """``/%2f%2fhost/``: an authority to a server that percent-decodes the target before it reads it."""
    return authority.is_authority_target(target.decode("ascii"))


def parse_response(data: bytes, method: str, ended: bool) -> Response | _Signal:
    """The response to a ``method`` request at the start of ``data``; ``ended``: the server closed after it.
    `MORE`, or `UNSURE` for what this module does not frame (an interim 1xx, a transfer coding other than
    chunked, a length beside a transfer coding, two lengths, a malformed head or chunk, a chunk extension)."""
    end = data.find(b"\r\n\r\n", 0, HEAD_MAX)
    if end < 0:
        partial = data[:HEAD_MAX].removesuffix(b"\r")
        return UNSURE if len(data) >= HEAD_MAX or ended or _lines(partial) is None else MORE
    lines = _lines(data[:end])
    if lines is None:
        return UNSURE
    start = _STATUS_LINE.fullmatch(lines[0])
    fields = _fields(lines[1:])
    if start is None or fields is None:
        return UNSURE
    status = int(start[1])
    if status < 200:
        return UNSURE  # 1xx: an interim answer, or a 101 to a request that asked for no upgrade
    reason = (start[2] or b"").decode("ascii")
    close = _closes(fields) or lines[0].startswith(b"HTTP/1.0")
    begin = end + 4
    if method == "HEAD" or status in (204, 304):
        return Response(status, reason, fields, b"", (), begin, close)
    framed = _body(data, begin, fields, ended)
    if isinstance(framed, _Signal):
        return framed
    body, trailers, size = framed
    by_close = not _values(fields, "content-length") and not _values(fields, "transfer-encoding")
    return Response(status, reason, fields, body, trailers, size, close or by_close)


_Body = tuple[bytes, tuple[tuple[str, str], ...], int]


def _body(data: bytes, begin: int, fields: tuple[tuple[str, str], ...], ended: bool) -> _Body | _Signal:
    """A response body from ``begin``: by its transfer coding (chunked only), its length, or the close."""
    codings, lengths = _values(fields, "transfer-encoding"), _values(fields, "content-length")
    if codings:
        if lengths or len(codings) != 1 or codings[0].strip().lower() != "chunked":
            return UNSURE
        chunked = _dechunk(data, begin)
        return UNSURE if chunked is MORE and ended else chunked
    if lengths:
        if len(lengths) != 1 or not lengths[0].isdigit():
            return UNSURE
        size = begin + int(lengths[0])
        if len(data) < size:
            return UNSURE if ended else MORE
        return data[begin:size], (), size
    if not ended:
        return MORE  # delimited by the close
    return data[begin:], (), len(data)


def wanted(data: bytes | bytearray) -> int:
    """Bytes a response whose head is in ``data`` needs before `parse_response` can finish it, when its head says
    (a Content-Length); 0 when unknown (parse again as bytes come)."""
    end = data.find(b"\r\n\r\n", 0, HEAD_MAX)
    if end < 0:
        return 0
    match = _LENGTH.search(data, 0, end + 2)
    return end + 4 + int(match[1]) if match is not None else 0


def _dechunk(data: bytes, at: int) -> tuple[bytes, tuple[tuple[str, str], ...], int] | _Signal:
    """A chunked body from ``at`` (RFC 9112 §7.1): its data, its trailers and where it ends."""
    parts = []
    while True:
        line_end = data.find(b"\r\n", at, at + 1024)
        if line_end < 0:
            return MORE if len(data) - at < 1024 else UNSURE
        match = _CHUNK_SIZE.fullmatch(data, at, line_end)
        if match is None:
            return UNSURE
        size = int(match[1], 16)
        at = line_end + 2
        if size == 0:
            break
        if len(data) < at + size + 2:
            return MORE
        if data[at + size : at + size + 2] != b"\r\n":
            return UNSURE
        parts.append(data[at : at + size])
        at += size + 2
    trailer_end = data.find(b"\r\n", at) if data.startswith(b"\r\n", at) else data.find(b"\r\n\r\n", at)
    if trailer_end < 0:
        return MORE
    if trailer_end == at:
        return b"".join(parts), (), at + 2
    lines = _lines(data[at:trailer_end])
    trailers = _fields(lines) if lines is not None else None
    if trailers is None:
        return UNSURE
    return b"".join(parts), trailers, trailer_end + 4


def blocked_answer(line: str, record_id: str) -> bytes:
    """egress's 403 for a blocked response, as the addon words it (`egress.proxy.mitm.flows.blocked_response`
    without the evidence, which is the server's bytes), closing the connection."""
    body = line + "\n" + (f"record: {record_id}\n" if record_id else "")
    head = [
        "HTTP/1.1 403 Forbidden",
        "Content-Type: text/plain; charset=utf-8",
        f"X-Egress-Blocked: {line[:400]}",
        *([f"X-Egress-Record: {record_id}"] if record_id else []),
        f"Content-Length: {len(body.encode())}",
        "Connection: close",
    ]
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode("utf-8", "replace")


_BAD_GATEWAY_TEXT: Final = b"egress: the response was not framed\n"
BAD_GATEWAY: Final = (
    b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nConnection: close\r\n"
    + b"Content-Length: %d\r\n\r\n" % len(_BAD_GATEWAY_TEXT)
    + _BAD_GATEWAY_TEXT
)
"""The answer to a response the fast path could not frame (mitmproxy answers a malformed response with a 502 too)."""
