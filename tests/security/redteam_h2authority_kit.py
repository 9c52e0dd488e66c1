"""The attacker's HTTP/2 forwarder of test_redteam_h2authority.py, and the frames its client sends: an HTTP/2 server
on an allowed host that reads each stream's destination as real servers and proxies do, not as the gateway does.

`forwarder_main` (in the internet namespace, on allowed.lab's address: TLS ports offering ALPN ``h2`` and
``http/1.1`` with the lab's allowed.lab certificate, plain ports taking h2c with prior knowledge, the h2c upgrade
(``Upgrade: h2c``) or HTTP/1) reads every stream of a connection without h2's own header checks and takes its
destination from the first of these readings that names another (`h2_destinations`):

- ``connect``: a CONNECT's ``:authority`` (a forward proxy's tunnel; ``connect-websocket``: RFC 8441's extended
  CONNECT with ``:protocol``);
- ``authority``: ``:authority`` (the host after the last ``@``, as a WHATWG parser reads it); ``authority-last``:
  the last of two;
- ``host-first``, ``host-last``: the first and the last ``host`` field (servers that prefer Host to
  ``:authority``: the request went through an HTTP/1 hop; either of two);
- ``whatwg``, ``decoded``, ``urlsplit``: the ``:path`` read as red team 9's forwarder reads an HTTP/1 target
  (`tests.security.redteam_authority_kit.destinations`): absolute, ``//host/``, percent-decoded.

A destination other than allowed.lab on the port the connection came to is logged (``forward READING HOST PORT``,
the ground truth) and fetched over HTTP/1.0, its answer handed back on the stream; anything else is answered with
``allowed.lab forwarder: own page``. Every stream's fields are logged (``stream FIELDS``). An HTTP/1 request
without ``Upgrade: h2c`` is left to red team 9's forwarder (`redteam_authority_kit._Connection`), so the
HTTP/1 leftovers (``Host: allowed.lab:``) are read the same way here.

The client side (`CLIENT`, in the sandbox) sends a row's byte parts on one connection (TLS with the ALPN the row
asks, or plain), waiting for what comes back after each; the frames are built by `preface`, `headers` and
`request` with hyperframe and hpack, so the games are exact: repeated pseudo-headers, a pseudo-header after a
regular field, CONTINUATION, Huffman-coded or never-indexed literals, names indexed in the dynamic table.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys
from collections.abc import Sequence
from typing import Final

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack
from hyperframe import frame

from tests.security.labonly import refuse_outside_a_namespace
from tests.security.redteam_authority_kit import (
    _ADDRESSES,
    OWN_PAGE,
    _Connection,
    _elsewhere,
    destinations,
    whatwg_destination,
)

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

CLIENT: Final = r"""
import socket, ssl, sys
from tests.security.mitm_client import resolve
port, alpn, cafile = int(sys.argv[1]), sys.argv[2], sys.argv[3]
parts = [bytes.fromhex(part) for part in sys.argv[4].split(",")]
sock = socket.create_connection((resolve("allowed.lab"), port), timeout=10)
if alpn != "plain":
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(alpn.split("+"))
    sock = context.wrap_socket(sock, server_hostname="allowed.lab")
    print("alpn", sock.selected_alpn_protocol(), flush=True)
for part in parts:
    try:
        sock.sendall(part)
    except OSError as exc:
        print("send failed", repr(exc), flush=True)
        break
    sock.settimeout(3)  # pacing only: what came back to this part, then the next part
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except OSError:
        pass
    print("answer", got.hex(), flush=True)
"""

Field = tuple[str, str] | hpack.HeaderTuple


def preface() -> bytes:
    """The client's preface and an empty SETTINGS."""
    return PREFACE + frame.SettingsFrame(0).serialize()


def fields(authority: str | None = "allowed.lab", path: str = "/", method: str = "GET", scheme: str = "https",
           *extra: Field) -> list[Field]:  # fmt: skip
    """A request's pseudo-headers (``:authority`` left out when None), then ``extra``."""
    found: list[Field] = [(":method", method), (":scheme", scheme), (":path", path)]
    if authority is not None:
        found.append((":authority", authority))
    return found + list(extra)


def headers(
    stream: int,
    block_fields: Sequence[Field],
    *,
    encoder: hpack.Encoder | None = None,
    huffman: bool = False,
    continuation: int = 0,
    end_stream: bool = True,
) -> bytes:
    """A HEADERS frame of ``block_fields`` (hpack, in order, unchecked); ``continuation``: the header block cut
    into this many more pieces, sent as CONTINUATION frames; ``encoder``: one shared across a connection's
    streams (its dynamic table indexes what came before)."""
    block = bytes((encoder or hpack.Encoder()).encode(list(block_fields), huffman=huffman))
    flags = ["END_STREAM"] if end_stream else []
    if not continuation:
        return frame.HeadersFrame(stream, block, flags=[*flags, "END_HEADERS"]).serialize()
    size = max(1, len(block) // (continuation + 1))
    pieces = [block[at : at + size] for at in range(0, len(block), size)]
    out = frame.HeadersFrame(stream, pieces[0], flags=flags).serialize()
    for n, piece in enumerate(pieces[1:], 1):
        out += frame.ContinuationFrame(stream, piece, flags=["END_HEADERS"] if n == len(pieces) - 1 else []).serialize()
    return out


def h2_destinations(stream_fields: Sequence[tuple[str, str]]) -> list[tuple[str, str, int | None]]:
    """Every (reading, host, port) this server may take a stream's destination from, first first."""
    pseudo: dict[str, list[str]] = {}
    hosts: list[str] = []
    for name, value in stream_fields:
        if name.startswith(":"):
            pseudo.setdefault(name, []).append(value)
        elif name.lower() == "host":
            hosts.append(value)
    method = (pseudo.get(":method") or [""])[0]
    path = (pseudo.get(":path") or [""])[0]
    authorities = pseudo.get(":authority", [])
    found: list[tuple[str, str, int | None]] = []

    def authority(reading: str, value: str) -> None:
        read = whatwg_destination("//" + value.strip(), "")
        if read is not None and read[0]:
            found.append((reading, read[0].rstrip("."), read[1]))

    if method.upper() == "CONNECT":
        reading = "connect-" + pseudo[":protocol"][0] if ":protocol" in pseudo else "connect"
        for value in authorities:
            authority(reading, value)
    for n, value in enumerate(authorities):
        authority("authority" if n == 0 else "authority-last", value)
    if hosts:
        authority("host-first", hosts[0])
        authority("host-last", hosts[-1])
    if path:
        base = authorities[0] if authorities else (hosts[0] if hosts else "")
        found += [read for read in destinations("GET", path, [base]) if read[0] != "host-last"]
    return found


class _H2:
    """One HTTP/2 connection, server side, without h2's header checks (what mitmproxy sends is all read)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
        self.reader, self.writer, self.port = reader, writer, port
        config = h2.config.H2Configuration(
            client_side=False, header_encoding="utf-8", validate_inbound_headers=False,
            normalize_inbound_headers=False, validate_outbound_headers=False,
        )  # fmt: skip
        self.conn = h2.connection.H2Connection(config)
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(
        self, upgrade_settings: str | None = None, upgrade_fields: list[tuple[str, str]] | None = None
    ) -> None:
        if upgrade_settings is not None:
            self.conn.initiate_upgrade_connection(upgrade_settings.encode())
            self._stream(1, upgrade_fields or [])
        else:
            self.conn.initiate_connection()
        await self._flush()
        while data := await self.reader.read(65536):
            try:
                events = self.conn.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                print("protocol-error", repr(exc), flush=True)
                await self._flush()
                return
            for event in events:
                if isinstance(event, h2.events.RequestReceived):
                    self._stream(event.stream_id, [(str(n), str(v)) for n, v in event.headers])
                elif isinstance(event, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            await self._flush()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def _stream(self, stream: int, stream_fields: list[tuple[str, str]]) -> None:
        print("stream", stream, stream_fields, flush=True)
        task = asyncio.ensure_future(self._answer(stream, stream_fields))
        self.tasks.add(task)

    async def _answer(self, stream: int, stream_fields: list[tuple[str, str]]) -> None:
        chosen = next(
            ((reading, host, port) for reading, host, port in h2_destinations(stream_fields)
             if _elsewhere(host, port, self.port)),
            None,
        )  # fmt: skip
        body = OWN_PAGE
        if chosen is not None:
            reading, host, port = chosen
            print("forward", reading, host, port or 80, flush=True)
            body = await _fetch(host, port or 80, next((v for n, v in stream_fields if n == ":path"), "/"))
        with contextlib.suppress(h2.exceptions.H2Error):
            self.conn.send_headers(stream, [(":status", "200"), ("content-length", str(len(body)))])
            self.conn.send_data(stream, body, end_stream=True)
        await self._flush()

    async def _flush(self) -> None:
        if data := self.conn.data_to_send():
            self.writer.write(data)
            with contextlib.suppress(ConnectionError):
                await self.writer.drain()


async def _fetch(host: str, port: int, path: str) -> bytes:
    """``GET`` the destination over HTTP/1.0; its whole answer (head and body), or a note why not."""
    if not path.startswith("/") or path.startswith("//"):
        path = "/"
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(_ADDRESSES.get(host, host), port), 3)
    except (OSError, TimeoutError, ValueError) as exc:
        return f"forwarder: {host}:{port} unreachable: {exc!r}\n".encode()
    writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


class _Tee:
    """A stream reader that first gives back what was already read from ``reader``, then the rest of it."""

    @staticmethod
    def of(first: bytes, reader: asyncio.StreamReader) -> asyncio.StreamReader:
        tee = asyncio.StreamReader()
        tee.feed_data(first)

        async def pump() -> None:
            with contextlib.suppress(ConnectionError):
                while data := await reader.read(65536):
                    tee.feed_data(data)
            tee.feed_eof()

        _PUMPS.add(asyncio.ensure_future(pump()))
        return tee


_PUMPS: set[asyncio.Task[None]] = set()


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
    ssl_object = writer.get_extra_info("ssl_object")
    if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
        await _H2(reader, writer, port).run()
        return
    first = b""
    while not first.startswith(PREFACE) and (PREFACE.startswith(first[: len(PREFACE)]) or b"\r\n\r\n" not in first):
        data = await reader.read(65536)
        if not data:
            return
        first += data
    if first.startswith(PREFACE):
        await _H2(_Tee.of(first, reader), writer, port).run()
        return
    head = first.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    parsed = [line.partition(":") for line in head[1:]]
    upgrade = {name.strip().lower(): value.strip() for name, _, value in parsed}
    if upgrade.get("upgrade", "").lower() == "h2c" and "http2-settings" in upgrade:
        print("h2c-upgrade", head[0], flush=True)
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
        rest = first.split(b"\r\n\r\n", 1)[1]
        method, target = [*head[0].split(), "", ""][:2]
        upgraded = [(":method", method), (":path", target), (":authority", upgrade.get("host", ""))]
        upgraded += [(name.strip().lower(), value.strip()) for name, _, value in parsed]
        await _H2(_Tee.of(rest, reader), writer, port).run(upgrade["http2-settings"], upgraded)
        return
    await _Connection(_Tee.of(first, reader), writer, port).run()


async def _serve(plain: list[tuple[str, int]], tls: list[tuple[str, int]], chain: str, key: str) -> None:
    def handler(port: int):  # type: ignore[no-untyped-def]
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, ValueError, asyncio.IncompleteReadError, ssl.SSLError):
                await _handle(reader, writer, port)
            writer.close()

        return handle

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.set_alpn_protocols(["h2", "http/1.1"])
    if tls:
        context.load_cert_chain(chain, key)
    servers = [await asyncio.start_server(handler(port), host, port, reuse_address=True) for host, port in plain]
    servers += [
        await asyncio.start_server(handler(port), host, port, reuse_address=True, ssl=context) for host, port in tls
    ]
    print("listening", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


def _address(spec: str) -> tuple[str, int]:
    host, _, port = spec.rpartition(":")
    return host, int(port)


def forwarder_main() -> None:
    """``python -c '...; forwarder_main()' CHAIN KEY plain=ADDRESS:PORT... tls=ADDRESS:PORT...``"""
    refuse_outside_a_namespace()  # it dials what a request names: only ever inside the lab
    chain, key, *specs = sys.argv[1:]
    plain = [_address(spec.removeprefix("plain=")) for spec in specs if spec.startswith("plain=")]
    tls = [_address(spec.removeprefix("tls=")) for spec in specs if spec.startswith("tls=")]
    asyncio.run(_serve(plain, tls, chain, key))
