"""Proxy tunnels opened in the clear: SOCKS4/4a, SOCKS5 and HTTP ``CONNECT``.

Signatures, all at the start of the client stream:

- SOCKS4 (Ying-Da Lee, "SOCKS: A protocol for TCP proxy across firewalls"): ``04 CD DSTPORT(2) DSTIP(4) USERID 00``
  with CD 1 (CONNECT) or 2 (BIND); SOCKS4a (Lee, "SOCKS 4A") sets DSTIP to ``0.0.0.x`` (x non-zero) and appends
  ``HOSTNAME 00``. The reply is ``00 CD`` with CD 90-93 (``5a``-``5d``).
- SOCKS5 (RFC 1928 §3-§6): greeting ``05 NMETHODS METHODS``, answered ``05 METHOD`` with one of the offered methods
  or ``ff``; then the request ``05 CMD 00 ATYP DST.ADDR DST.PORT`` with CMD 1-3 and ATYP 1, 3 or 4.
- HTTP CONNECT (RFC 9110 §9.3.6): ``CONNECT host:port HTTP/1.x``; a 2xx answer means the tunnel is up.

A flow is flagged on the client's greeting alone, before any answer: the gateway blocks (or sends to a silent
sink) before a server could answer, and an attempt is an attempt whatever the server would have said. Flagged:
a whole SOCKS4/4a request (``CONNECT``/``BIND``, a non-zero address, a NUL-terminated user id and 4a host name)
that is all the client sent, or that the server answered as SOCKS; a SOCKS5 greeting that is all the client
sent (every SOCKS5 client then waits for the method selection; methods from IANA's registry: 00-09, 80-FE), or a
greeting followed by a well-formed request, or answered by a method selection; a whole CONNECT request head.
The target (``host:port``) is in the evidence when the client named it; a SOCKS5 client names it only after the
server chose a method, so an unanswered greeting's evidence says where it was sent instead (the record's
``dst``/``dport``). Not flagged: a SOCKS4 request with neither user id nor 4a host name followed by more bytes that no
SOCKS reply invited, a greeting
followed by something that is not a request, a reply that is not SOCKS. Which evidence a flow gets depends on
where its first segment ends (a greeting alone, or with its request); the protocol does not.
"""

from __future__ import annotations

from egress.detect import http
from egress.detect.base import MORE, Category, Finding, FlowView, Result, Transport, _More, evidence

NAME = "proxytunnel"
_PRINTABLE = frozenset(range(0x20, 0x7F))
_CONNECT = b"CONNECT "


def _cstring(data: bytes, start: int, limit: int = 255) -> tuple[bytes, int] | None | bool:
    """A NUL-terminated printable string at ``start``: (text, end), None if not yet ended, False if invalid."""
    end = data.find(b"\x00", start, start + limit + 1)
    chunk = data[start:end] if end >= 0 else data[start : start + limit + 1]
    if not all(ch in _PRINTABLE for ch in chunk):
        return False
    if end < 0:
        return None if len(data) - start <= limit else False
    return chunk, end + 1


def _socks4_request(data: bytes, complete: bool) -> tuple[str, bool] | None | _More:
    """A CONNECT or BIND request: its ``host:port`` and whether it names a user or a 4a host; None if not one."""
    if len(data) >= 2 and data[1] not in (1, 2):
        return None
    user = _cstring(data, 8) if len(data) >= 9 else None
    if user is False:
        return None
    if not isinstance(user, tuple):
        return None if complete else MORE
    userid, end = user
    host = b""
    if data[4:7] == b"\x00\x00\x00" and data[7] != 0:  # SOCKS4a: DSTIP 0.0.0.x, the host name follows
        named = _cstring(data, end)
        if named is False or (isinstance(named, tuple) and not named[0]):
            return None
        if not isinstance(named, tuple):
            return None if complete else MORE
        host = named[0]
    port = int.from_bytes(data[2:4])
    if not host and data[4:8] == b"\x00\x00\x00\x00":
        return None  # 0.0.0.0 is no destination
    target = host.decode("ascii") if host else ".".join(str(b) for b in data[4:8])
    return f"{target}:{port}", bool(userid or host)


def _socks4(view: FlowView) -> Result:
    request = _socks4_request(view.client, view.complete)
    if not isinstance(request, tuple):
        return request
    target, specific = request
    reply = view.server
    if reply:
        if reply[0] != 0 or (len(reply) >= 2 and not 0x5A <= reply[1] <= 0x5D):
            return None
    elif not specific and len(view.client) > _socks4_end(view.client):
        # A SOCKS4 client waits for the reply before sending more: without one, this is something else.
        return None if view.complete else MORE
    return Finding(Category.TUNNEL, "socks4", NAME, evidence(f"SOCKS4 CONNECT {target}"))


def _socks4_end(data: bytes) -> int:
    """Where a whole SOCKS4/4a request ends (`_socks4_request` said it is whole)."""
    end = data.index(b"\x00", 8) + 1
    if data[4:7] == b"\x00\x00\x00" and data[7] != 0:
        end = data.index(b"\x00", end) + 1
    return end


def _socks5_request(data: bytes, start: int) -> bool | None:
    """True: a well-formed ``05 CMD 00 ATYP ADDR PORT`` at ``start``; None: too short; False: not one."""
    head = data[start : start + 5]
    if len(head) < 5:
        return None if (b"\x05"[: len(head)] == head[:1]) else False
    if head[0] != 5 or head[1] not in (1, 2, 3) or head[2] != 0 or head[3] not in (1, 3, 4):
        return False
    if head[3] == 3:
        if head[4] == 0:
            return False
        name = data[start + 5 : start + 5 + head[4]]
        if not all(ch in _PRINTABLE for ch in name):
            return False
        size = 5 + head[4] + 2
    else:
        size = 4 + (4 if head[3] == 1 else 16) + 2
    return True if len(data) - start >= size else None


_METHODS = frozenset(range(0x0A)) | frozenset(range(0x80, 0xFF))
"""SOCKS5 authentication methods: IANA's assigned 00-09 and the private range 80-FE (FF means "none")."""


def _socks5(view: FlowView) -> Result:
    data = view.client
    if len(data) < 2:
        return None if view.complete else MORE
    count = data[1]
    if not 1 <= count <= 16:
        return None
    methods = data[2 : 2 + count]
    if not set(methods) <= _METHODS or len(set(methods)) != len(methods):
        return None
    if len(methods) < count:
        return None if view.complete else MORE
    reply = view.server
    if reply:
        if reply[0] != 5 or (len(reply) >= 2 and reply[1] not in methods and reply[1] != 0xFF):
            return None
        if len(reply) >= 2:
            return _found5(view, data, 2 + count)
    if len(data) == 2 + count:
        return _found5(view, data, 2 + count)  # the greeting, all a SOCKS5 client sends before the answer
    request = _socks5_request(data, 2 + count)
    if request:
        return _found5(view, data, 2 + count)
    if request is False or view.complete:
        return None
    return MORE


def _found5(view: FlowView, data: bytes, start: int) -> Finding:
    text = _describe5(data, start)
    if not _socks5_request(data, start):
        text += f" sent to {view.meta.dst}:{view.meta.dport}"
    return Finding(Category.TUNNEL, "socks5", NAME, evidence(text))


def _describe5(data: bytes, start: int) -> str:
    if _socks5_request(data, start):
        atyp = data[start + 3]
        if atyp == 3:
            size = data[start + 4]
            host = data[start + 5 : start + 5 + size].decode("ascii")
            port = int.from_bytes(data[start + 5 + size : start + 7 + size])
        elif atyp == 1:
            host = ".".join(str(b) for b in data[start + 4 : start + 8])
            port = int.from_bytes(data[start + 8 : start + 10])
        else:
            host = data[start + 4 : start + 20].hex()
            port = int.from_bytes(data[start + 20 : start + 22])
        return f"SOCKS5 CMD {data[start + 1]} {host}:{port}"
    return f"SOCKS5 greeting methods {data[2:start].hex()}"


def _connect(view: FlowView) -> Result:
    request = http.request_of(view)
    if not isinstance(request, http.HttpRequest):
        return None if request is None or view.complete else MORE
    if request.method != "CONNECT":
        return None
    return Finding(Category.TUNNEL, "http-connect", NAME, evidence(f"CONNECT {request.target} {request.version}"))


def detect(view: FlowView) -> Result:
    """A TCP flow that opens a SOCKS4/4a, SOCKS5 or HTTP CONNECT tunnel."""
    data = view.client
    if view.meta.transport is not Transport.TCP:
        return None
    if not data:
        return None if view.complete else MORE
    first = data[0]
    if first == 4:
        return _socks4(view)
    if first == 5:
        return _socks5(view)
    if (first == 0x43 and _CONNECT.startswith(data[:8])) or data.startswith(_CONNECT):
        return _connect(view)
    return None
