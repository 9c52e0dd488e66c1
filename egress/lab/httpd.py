"""The lab's HTTP/1.1 servers: the web sites, the DoH endpoint and the WebSocket echo (asyncio, keep-alive).

Routes, per site (`site_handler`): ``/`` (a line naming the site: clients see which server they reached),
``/simple/pkg/pkg-1.0.tar.gz`` (`topology.package_bytes`), ``/big?mb=N`` (N MiB streamed, for benchmarks);
``doh.lab`` adds ``/dns-query`` (RFC 8484: POST ``application/dns-message``, or GET ``?dns=`` base64url);
``ws.lab`` adds the WebSocket upgrade on any path (RFC 6455 §4.2) and echoes data frames. The same handler
serves plain HTTP and, behind the listener's TLS, HTTPS.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ssl
import struct
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from egress.lab import authority
from egress.lab.topology import BIG_DEFAULT_MB, BIG_MAX_MB, BIG_PATH, PACKAGE_PATH, Server, package_bytes

IDLE = 30.0
MAX_BODY = 1 << 20
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_CHUNK = hashlib.shake_256(b"egress lab big").digest(1 << 20)
_PACKAGE = package_bytes()
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    """Header names lowercased; a repeated header keeps its last value."""
    body: bytes

    @property
    def path(self) -> str:
        return urllib.parse.urlsplit(self.target).path

    def query(self, key: str) -> str | None:
        values = urllib.parse.parse_qs(urllib.parse.urlsplit(self.target).query).get(key)
        return values[0] if values else None

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        return connection != "close" if self.version == "HTTP/1.1" else connection == "keep-alive"


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request on the connection, or None when the client closed, idled or sent something else."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
        return None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    if not 0 <= length <= MAX_BODY:
        return None
    try:
        body = await asyncio.wait_for(reader.readexactly(length), IDLE) if length else b""
    except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
        return None
    return Request(parts[0], parts[1], parts[2], headers, body)


def _head(status: str, site: str, length: int, content_type: str, keep_alive: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {status}",
        "Server: egress-lab",
        f"X-Lab-Site: {site}",
        f"Content-Type: {content_type}",
        f"Content-Length: {length}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _websocket(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    key = request.headers.get("sec-websocket-key", "").encode()
    accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        + f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
    )
    await writer.drain()
    while True:
        first, second = await asyncio.wait_for(reader.readexactly(2), IDLE)
        opcode, length = first & 0x0F, second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await reader.readexactly(8))
        if length > MAX_BODY:
            return
        mask = await reader.readexactly(4) if second & 0x80 else b"\0\0\0\0"
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(await reader.readexactly(length)))
        if opcode == 8:
            writer.write(b"\x88\x00")
            await writer.drain()
            return
        reply_opcode = 10 if opcode == 9 else opcode
        if reply_opcode in (0, 1, 2, 10):
            size = (
                bytes([length])
                if length < 126
                else (b"\x7e" + struct.pack("!H", length) if length < 65536 else b"\x7f" + struct.pack("!Q", length))
            )
            writer.write(bytes([(first & 0x80) | reply_opcode]) + size + payload)
            await writer.drain()


def _doh(request: Request) -> bytes | None:
    if request.method == "POST" and request.headers.get("content-type", "") == "application/dns-message":
        return authority.answer(request.body)
    encoded = request.query("dns")
    if request.method == "GET" and encoded:
        with contextlib.suppress(ValueError):
            return authority.answer(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    return None


async def _respond(server: Server, request: Request, writer: asyncio.StreamWriter) -> bool:
    """Answer one request; return whether the connection stays open."""
    keep = request.keep_alive
    path = request.path
    status, content_type, body = "404 Not Found", "text/plain", f"{server.name}: no such page\n".encode()
    if path == "/":
        status, body = "200 OK", f"{server.name}: hello from the egress lab\n".encode()
    elif path == PACKAGE_PATH and server.key in ("allowed", "blocked"):
        status, content_type, body = "200 OK", "application/octet-stream", _PACKAGE
    elif path == BIG_PATH:
        try:
            mb = min(max(int(request.query("mb") or BIG_DEFAULT_MB), 0), BIG_MAX_MB)
        except ValueError:
            mb = BIG_DEFAULT_MB
        writer.write(_head("200 OK", server.name, mb * len(_CHUNK), "application/octet-stream", keep))
        for _ in range(mb):
            writer.write(_CHUNK)
            await writer.drain()
        return keep
    elif path == "/dns-query" and server.key == "doh":
        response = _doh(request)
        if response is None:
            status, body = "400 Bad Request", b"doh.lab: want application/dns-message\n"
        else:
            status, content_type, body = "200 OK", "application/dns-message", response
    writer.write(
        _head(status, server.name, len(body), content_type, keep) + (body if request.method != "HEAD" else b"")
    )
    await writer.drain()
    return keep


def site_handler(server: Server) -> Handler:
    """The connection handler for one lab host's HTTP(S) listener."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (request := await read_request(reader)) is not None:
                upgrade = request.headers.get("upgrade", "").lower() == "websocket"
                if upgrade and server.key == "ws":
                    await _websocket(request, reader, writer)
                    return
                if not await _respond(server, request, writer):
                    return
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    return handle
