"""An "allowed" site that the attacker runs, on loopback: whatever it receives is ground truth.

It speaks just enough to play along with every evasion of the decrypted-traffic tests: HTTP/1.1 requests with
Content-Length or chunked bodies (and trailers), ``101`` to any ``Upgrade`` (and to ``GET /switch`` even without
one), WebSocket after a ``websocket`` upgrade (wsproto), Server-Sent Events on ``GET /sse``, and raw bytes on a
connection that does not start with HTTP. It decodes what it receives as leniently as an attacker's server
would (any content coding it knows, an unknown one as identity) and logs each piece; `Site.received` is what the
tests search for the secret. Plain and TLS listeners (the TLS one with the lab's ``allowed.lab`` certificate).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import wsproto
import wsproto.events
from mitmproxy.net import encoding

SSE_JOB = (
    b'data: {"id":null,"method":"mining.notify",'
    b'"params":["job1","00ff","01","02",[],"2000","1d00ffff","5f5e1000",true]}\n\n'
)


GREETING = b"* OK allowed.lab ready\r\n"


def lenient(body: bytes, coding: str) -> bytes:
    """What a lenient server makes of a body: each coding it knows undone, anything else taken as it is."""
    for name in reversed([c.strip().lower() for c in coding.split(",") if c.strip()]):
        with contextlib.suppress(ValueError, zlib.error):
            if name == "x-gzip":
                body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
            else:
                decoded = encoding.decode(body, name)
                body = decoded if isinstance(decoded, bytes) else decoded.encode()
    return body


@dataclass
class Site:
    """The attacker's server and its log (thread-safe appends; read with `received`)."""

    log: list[tuple[str, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    connections: int = 0
    open: int = 0
    """Connections the site is still serving (a test waits for none before judging from a fresh log)."""
    greeting_ports: set[int] = field(default_factory=set)
    """Listeners whose connections start with the server's `GREETING`."""
    echo: bool = False
    """Also print each piece as ``KIND HEX`` on stdout (the lab's attacker log, `main`)."""

    def note(self, kind: str, data: bytes) -> None:
        with self.lock:
            self.log.append((kind, data))
        if self.echo:
            print(kind, data.hex(), flush=True)

    def clear(self) -> None:
        with self.lock:
            self.log.clear()

    def received(self, kind: str | None = None) -> bytes:
        with self.lock:
            return b"\n".join(data for k, data in self.log if kind is None or k == kind)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        try:
            if writer.get_extra_info("sockname")[1] in self.greeting_ports:
                writer.write(GREETING)  # a server-first protocol's banner (or an HTTP/2 server's SETTINGS)
            await _Conversation(self, reader, writer).run()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()
            self.open -= 1


class _Conversation:
    def __init__(self, site: Site, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.site, self.reader, self.writer = site, reader, writer
        self.buffer = b""

    async def _more(self) -> bool:
        chunk = await self.reader.read(65536)
        if chunk:
            self.site.note("wire", chunk)
        self.buffer += chunk
        return bool(chunk)

    async def run(self) -> None:
        tls = self.writer.get_extra_info("ssl_object")
        if tls is not None and tls.selected_alpn_protocol() == "h2":
            await self._h2()
            return
        if not await self._more():
            return
        if not self.buffer[:8].split(b" ")[0].isalpha():
            await self._raw()
            return
        while True:
            while b"\r\n\r\n" not in self.buffer:
                if not await self._more():
                    return
            head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            body = await self._body(headers)
            method, target = lines[0].split(" ")[:2]
            self.site.note("request", f"{lines[0]}\r\n{head.decode('latin-1')}".encode("latin-1"))
            self.site.note("body", lenient(body, headers.get("content-encoding", "")))
            upgrade = headers.get("upgrade", "")
            if upgrade.lower() == "websocket":
                await self._websocket(head + b"\r\n\r\n")
                return
            if upgrade or target == "/switch":
                self.writer.write(f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: {upgrade or 'rawtcp'}\r\n"
                                  "Connection: Upgrade\r\n\r\n".encode())  # fmt: skip
                await self._raw()
                return
            answer, kind = (SSE_JOB, "text/event-stream") if target == "/sse" else (b"ok\n", "text/plain")
            self.writer.write(
                f"HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {len(answer)}\r\n\r\n".encode() + answer
            )
            await self.writer.drain()
            del method

    async def _body(self, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = b""
            while True:
                while b"\r\n" not in self.buffer:
                    if not await self._more():
                        return body
                size_line, self.buffer = self.buffer.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    while b"\r\n\r\n" not in b"\r\n" + self.buffer:
                        if not await self._more():
                            return body
                    trailers, _, self.buffer = (b"\r\n" + self.buffer).partition(b"\r\n\r\n")
                    self.site.note("trailers", trailers)
                    return body
                while len(self.buffer) < size + 2:
                    if not await self._more():
                        return body + self.buffer
                body, self.buffer = body + self.buffer[:size], self.buffer[size + 2 :]
        length = int(headers.get("content-length", "0") or 0)
        while len(self.buffer) < length:
            if not await self._more():
                break
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return body

    async def _h2(self) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        self.writer.write(conn.data_to_send())
        bodies: dict[int, bytes] = {}
        while chunk := await self.reader.read(65536):
            self.site.note("wire", chunk)
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.RequestReceived):
                    self.site.note("request", repr(event.headers).encode())
                    bodies[event.stream_id] = b""
                elif isinstance(event, h2.events.DataReceived):
                    bodies[event.stream_id] = bodies.get(event.stream_id, b"") + event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    self.site.note("body", bodies.pop(event.stream_id, b""))
                    conn.send_headers(event.stream_id, [(":status", "200"), ("content-length", "3")])
                    conn.send_data(event.stream_id, b"ok\n", end_stream=True)
            self.writer.write(conn.data_to_send())

    async def _raw(self) -> None:
        self.site.note("raw", self.buffer)
        while chunk := await self.reader.read(65536):
            self.site.note("wire", chunk)
            self.site.note("raw", chunk)

    async def _websocket(self, head: bytes) -> None:
        ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        ws.receive_data(head + self.buffer)
        while True:
            for event in ws.events():
                if isinstance(event, wsproto.events.Request):
                    self.writer.write(ws.send(wsproto.events.AcceptConnection()))
                elif isinstance(event, wsproto.events.Message):
                    data = event.data.encode() if isinstance(event.data, str) else bytes(event.data)
                    self.site.note("ws", data)
                    self.writer.write(ws.send(wsproto.events.TextMessage("ack")))
                elif isinstance(event, wsproto.events.Ping):
                    self.site.note("ws-ping", bytes(event.payload))
                    self.writer.write(ws.send(event.response()))
                elif isinstance(event, wsproto.events.CloseConnection):
                    return
            chunk = await self.reader.read(65536)
            if not chunk:
                return
            self.site.note("wire", chunk)
            ws.receive_data(chunk)


def serve_forever(
    site: Site, context: ssl.SSLContext | None, ready: Callable[[int], None], loop: asyncio.AbstractEventLoop
) -> asyncio.Future[asyncio.Server]:
    """Start one listener of ``site`` on a free loopback port in ``loop``; ``ready(port)`` once it listens."""

    async def start() -> asyncio.Server:
        server = await asyncio.start_server(site.handle, "127.0.0.1", 0, ssl=context)
        ready(int(server.sockets[0].getsockname()[1]))
        return server

    return asyncio.run_coroutine_threadsafe(start(), loop)  # type: ignore[return-value]


def parse_log(text: str) -> list[tuple[str, bytes]]:
    """The pieces a `main` site printed (its attacker log in the lab)."""
    pieces = []
    for line in text.splitlines():
        kind, _, data = line.partition(" ")
        if kind in {"wire", "request", "body", "trailers", "raw", "ws", "ws-ping"}:
            pieces.append((kind, bytes.fromhex(data.strip())))
    return pieces


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.proxy.mitm.site HOST PLAIN_PORT TLS_PORT CHAIN KEY``: the site on HOST (the lab's internet
    namespace), logging what it receives on stdout."""
    import sys

    host, plain, secure, chain, key = (argv if argv is not None else sys.argv[1:])[:5]
    site = Site(echo=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(chain, key)
    context.set_alpn_protocols(["h2", "http/1.1"])  # HTTP/2 when the client offers it (test_mitm_records)

    async def serve() -> None:
        servers = [
            await asyncio.start_server(site.handle, host, int(plain)),
            await asyncio.start_server(site.handle, host, int(secure), ssl=context),
        ]
        print("listening", flush=True)
        await asyncio.gather(*(server.serve_forever() for server in servers))

    asyncio.run(serve())


if __name__ == "__main__":
    main()
