"""The attacker's forwarder of test_redteam_authority.py: an HTTP server on an allowed host that reads a
request's destination from its target and Host as some real servers and proxies do, not as the gateway does, and
forwards the request there.

`forwarder_main` (in the internet namespace, on allowed.lab's address: plain ports, and TLS ports with the lab's
allowed.lab certificate) reads each request leniently (a request line of two words is HTTP/0.9, any version word
is taken, every Host line kept) and takes the destination from the first of these readings that names another:

- ``whatwg``: the target resolved against ``http://<Host>`` as a WHATWG URL parser does (Node's
  ``new URL(req.url, `http://${req.headers.host}`)``): a backslash is a slash in a special scheme, any number of
  slashes start the authority, which ends at ``/ ? # \\``; the host is after the last ``@``, percent-decoded,
  and a number or dotted numbers in decimal, octal or hex is an IPv4 address;
- ``decoded``: the same of the target percent-decoded first (a server that decodes the path before it reads it:
  ``/%2f%2fblocked.lab/``);
- ``urlsplit``: Python's `urllib.parse.urlsplit` of the target, the reading of a forward proxy built on
  `http.server` (``self.path``): ``//blocked.lab/x`` and ``http://allowed.lab\\@blocked.lab/`` name blocked.lab;
- ``host-last``: the last Host line (servers that keep the last of a repeated field), with its port;
- ``connect``: a ``CONNECT host:port`` (a forward proxy's tunnel).

A destination other than allowed.lab on the port the connection came to is logged (``forward READING HOST PORT``,
the module's ground truth: the gateway let through a request this server reads as another destination) and
fetched (the request line rewritten to origin form, HTTP/1.0, ``Connection: close``), its answer handed back to the
client; a CONNECT is answered ``200`` and relayed both ways. Anything else is answered ``200`` with ``allowed.lab
forwarder: own page``. Every request is logged (``request HEX``: the head).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
import sys
import urllib.parse
from typing import Final

from egress.lab.topology import SERVERS
from tests.security.labonly import refuse_outside_a_namespace

SELF: Final = "allowed.lab"
OWN_PAGE: Final = b"allowed.lab forwarder: own page\n"
_ADDRESSES: Final = {server.name: server.v4 for server in SERVERS}


def _ipv4_number(part: str) -> int | None:
    """One part of a WHATWG IPv4 host: decimal, ``0x`` hex or ``0`` octal; None when it is not a number."""
    try:
        if part.lower().startswith("0x"):
            return int(part[2:] or "0", 16)
        if len(part) > 1 and part.startswith("0"):
            return int(part[1:], 8)
        return int(part, 10)
    except ValueError:
        return None


def whatwg_host(host: str) -> str:
    """A host as the WHATWG URL standard reads it: percent-decoded, lowercased, numbers made an IPv4 address."""
    host = urllib.parse.unquote(host).lower()
    if host.startswith("[") and host.endswith("]"):
        with contextlib.suppress(ValueError):
            address = ipaddress.ip_address(host[1:-1])
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                return str(address.ipv4_mapped)
            return str(address)
        return host
    parts = host.removesuffix(".").split(".")
    numbers = [_ipv4_number(part) for part in parts]
    if 1 <= len(parts) <= 4 and all(number is not None for number in numbers):
        values = [number for number in numbers if number is not None]
        value = values[-1] + sum(n << (8 * (3 - i)) for i, n in enumerate(values[:-1]))
        if value < 1 << 32:
            return str(ipaddress.IPv4Address(value))
    return host


def whatwg_destination(target: str, host_field: str) -> tuple[str, int | None] | None:
    """The (host, port) of ``target`` resolved against ``http://<host_field>``, when the target names its own."""
    text = target.replace("\\", "/")
    scheme, sep, rest = text.partition("://")
    if sep and scheme.isalpha():
        if scheme.lower() not in ("http", "https", "ws", "wss", "ftp"):
            return None
        authority = rest.lstrip("/")  # a special scheme's authority skips any further slashes
    elif text.startswith("//"):
        authority = text.lstrip("/")
    else:
        return None
    for end in "/?#":
        authority = authority.split(end, 1)[0]
    hostport = authority.rsplit("@", 1)[-1]
    if hostport.startswith("["):
        host, _, tail = hostport.partition("]")
        host, port = host + "]", tail.removeprefix(":")
    else:
        host, _, port = hostport.partition(":")
    return whatwg_host(host), int(port) if port.isdigit() else None


def destinations(method: str, target: str, hosts: list[str]) -> list[tuple[str, str, int | None]]:
    """Every (reading, host, port) this server may take the request's destination from, first first."""
    found: list[tuple[str, str, int | None]] = []
    if method == "CONNECT":
        host, _, port = target.rpartition(":")
        found.append(("connect", whatwg_host(host), int(port) if port.isdigit() else None))
        return found
    read = whatwg_destination(target, hosts[0] if hosts else "")
    if read is not None and read[0]:
        found.append(("whatwg", read[0].rstrip("."), read[1]))
    decoded = urllib.parse.unquote(target)
    read = whatwg_destination(decoded, hosts[0] if hosts else "") if decoded != target else None
    if read is not None and read[0]:
        found.append(("decoded", read[0].rstrip("."), read[1]))
    split = urllib.parse.urlsplit(target)
    if split.hostname:
        with contextlib.suppress(ValueError):
            found.append(("urlsplit", split.hostname.rstrip("."), split.port))
    if hosts:
        host, _, port = hosts[-1].strip().rpartition(":") if ":" in hosts[-1] else (hosts[-1].strip(), "", "")
        found.append(("host-last", whatwg_host(host).rstrip("."), int(port) if port.isdigit() else None))
    return found


def _elsewhere(host: str, port: int | None, local_port: int) -> bool:
    """A destination that is not this server itself (allowed.lab, or its address, on the port it listens on)."""
    own = host in (SELF, _ADDRESSES[SELF])
    return not own or (port is not None and port != local_port)


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
        self.reader, self.writer, self.port = reader, writer, port

    async def _head(self) -> list[bytes] | None:
        lines: list[bytes] = []
        while True:
            line = await self.reader.readline()
            if not line:
                return None
            line = line.rstrip(b"\r\n")
            if not line:
                if lines:
                    return lines
                continue
            lines.append(line)
            words = lines[0].split()
            if len(lines) == 1 and len(words) == 2:
                return lines  # HTTP/0.9: a request line of two words, no head fields

    async def run(self) -> None:
        while True:
            head = await self._head()
            if head is None:
                return
            print("request", b"\r\n".join(head).hex(), flush=True)
            words = head[0].decode("latin-1").split()
            method, target = [*words, "", ""][:2]
            fields = [line.decode("latin-1").partition(":") for line in head[1:]]
            hosts = [value.strip() for name, _, value in fields if name.strip().lower() == "host"]
            length = next((value.strip() for name, _, value in fields if name.strip().lower() == "content-length"), "")
            body = await self.reader.readexactly(int(length)) if length.isdigit() else b""
            chosen = next(
                ((reading, host, port) for reading, host, port in destinations(method, target, hosts)
                 if _elsewhere(host, port, self.port)),
                None,
            )  # fmt: skip
            if chosen is None:
                self.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(OWN_PAGE), OWN_PAGE))
                await self.writer.drain()
                if len(words) == 2:
                    return
                continue
            reading, host, port = chosen
            print("forward", reading, host, port or 80, flush=True)
            await self._forward(method, target, host, port or 80, body)
            return

    async def _forward(self, method: str, target: str, host: str, port: int, body: bytes) -> None:
        address = _ADDRESSES.get(host, host)
        try:
            upstream_reader, upstream_writer = await asyncio.wait_for(asyncio.open_connection(address, port), 3)
        except (OSError, TimeoutError, ValueError):
            self.writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            await self.writer.drain()
            return
        if method == "CONNECT":
            self.writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await self.writer.drain()
            await asyncio.gather(_pipe(self.reader, upstream_writer), _pipe(upstream_reader, self.writer))
            return
        split = urllib.parse.urlsplit(target.replace("\\", "/"))
        path = split.path if target.startswith(("http", "HTTP", "//", "/\\", "ws", "ftp")) else target
        request = f"{method or 'GET'} {path or '/'} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n"
        upstream_writer.write(request.encode() + (b"Content-Length: %d\r\n" % len(body) if body else b"") + b"\r\n")
        upstream_writer.write(body)
        await upstream_writer.drain()
        answer = await upstream_reader.read()
        upstream_writer.close()
        self.writer.write(answer)
        await self.writer.drain()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            print("tunnel", data.hex(), flush=True)
            writer.write(data)
            await writer.drain()
    writer.close()


async def _serve(plain: list[tuple[str, int]], tls: list[tuple[str, int]], chain: str, key: str) -> None:
    def handler(port: int):  # type: ignore[no-untyped-def]
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, ValueError, asyncio.IncompleteReadError):
                await _Connection(reader, writer, port).run()
            writer.close()

        return handle

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
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
