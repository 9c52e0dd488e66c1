"""The lenient server of test_redteam_http_desync.py: HTTP/1.1 framed the way some real servers frame it, not
the way egress does, so that what one reads as a body the other reads as a request.

`site_main` (in the internet namespace, on the addresses it is given) parses each connection as a loose server
would, and logs every request it takes (``request HEX``: the head) and every body (``body HEX``: chunked framing
and a ``Content-Encoding`` undone, `tests.proxy.mitm.site.lenient`) on stdout, the attacker's log and the ground
truth of the module. Its quirks, each one some real server's:

- a ``GET``, ``HEAD``, ``OPTIONS`` or ``DELETE`` has no body: a ``Content-Length`` on one is ignored, its bytes are
  the next request (Python's `http.server`, and many small servers, read no body they do not expect);
- a bare LF ends a line; a line starting with a space or tab continues the one before (obs-fold); whitespace
  before the colon is dropped from the name;
- ``chunked`` anywhere in ``Transfer-Encoding`` means chunked (``chunked, identity`` too), and it wins over a
  ``Content-Length``; of two lengths the first counts;
- a chunk size is its leading hex digits, anything after them (an extension, junk) ignored, wrapped at 64 bits
  as C's unsigned arithmetic wraps it; trailers are read to the empty line;
- an ``HTTP/1.0`` request with ``Connection: keep-alive`` keeps the connection; an ``Upgrade`` is refused
  (answered ``200``), and the connection goes on as HTTP;
- ``CONNECT host:port`` is answered ``200`` and what follows logged as ``tunnel HEX`` (a forward proxy's tunnel).

Its answers: ``200 ok`` with a length, except ``GET /job`` (`JOB_PATHS`), whose answer hands the pool's job
(``mining.notify``) over outside the response's body: in a chunk extension, or in a trailer.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Final

from tests.proxy.mitm.site import lenient

JOB: Final = (
    b'{"id":null,"method":"mining.notify","params":["job1","00ff","01","02",[],"20000000","1d00ffff","5f5e1000",true]}'
)
"""The pool's job, verbatim (its ``"method":"mining.notify"`` is what the module looks for at the client)."""
JOB_PATHS: Final = {
    b"/job": b"2;" + JOB + b"\r\nok\r\n0\r\n\r\n",  # in the extension of a chunk
    b"/job-quoted": b'2;job="' + JOB.replace(b'"', b'\\"') + b'"\r\nok\r\n0\r\n\r\n',  # quoted-string form
    b"/job-trailer": b"2\r\nok\r\n0\r\nX-Job: " + JOB + b"\r\n\r\n",  # in a trailer
}
_BODILESS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"DELETE"})
_HEX: Final = b"0123456789abcdefABCDEF"


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buffer = b""

    async def _more(self) -> bool:
        chunk = await self.reader.read(65536)
        self.buffer += chunk
        return bool(chunk)

    async def _line(self) -> bytes | None:
        while b"\n" not in self.buffer:
            if not await self._more():
                return None
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.removesuffix(b"\r")

    async def _head(self) -> list[bytes] | None:
        lines: list[bytes] = []
        while True:
            line = await self._line()
            if line is None:
                return None
            if not line:
                if lines:
                    return lines
                continue  # empty lines before a request are skipped (RFC 9112 §2.2)
            if line[:1] in (b" ", b"\t") and len(lines) > 1:
                lines[-1] += b" " + line.strip()  # obs-fold
            else:
                lines.append(line)

    async def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not await self._more():
                break
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    async def _chunked(self) -> bytes:
        body = b""
        while True:
            line = await self._line()
            if line is None:
                return body
            digits = line[: len(line) - len(line.lstrip(_HEX))]
            size = int(digits, 16) % (1 << 64) if digits else 0
            if size == 0:
                while (trailer := await self._line()) is not None and trailer:
                    pass
                return body
            body += await self._take(size)
            await self._line()

    async def run(self) -> None:
        while True:
            head = await self._head()
            if head is None:
                return
            print("request", b"\r\n".join(head).hex(), flush=True)
            parts = head[0].split()
            method = parts[0] if parts else b""
            target = parts[1] if len(parts) > 1 else b""
            fields: dict[bytes, bytes] = {}
            for line in head[1:]:
                name, _, value = line.partition(b":")
                fields.setdefault(name.strip().lower(), value.strip())
            if method == b"CONNECT":
                self.writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                while await self._more():
                    print("tunnel", self.buffer.hex(), flush=True)
                    self.buffer = b""
                return
            body = b""
            if method not in _BODILESS:
                if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
                    body = await self._chunked()
                else:
                    digits = fields.get(b"content-length", b"0").split(b",")[0].strip()
                    body = await self._take(int(digits) if digits.isdigit() else 0)
            print("body", lenient(body, fields.get(b"content-encoding", b"").decode("latin-1")).hex(), flush=True)
            chunked = JOB_PATHS.get(target) if method == b"GET" else None
            if chunked is not None:
                self.writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  + chunked)  # fmt: skip
            else:
                self.writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n")
            await self.writer.drain()
            closing = fields.get(b"connection", b"").lower()
            if b"close" in closing or (parts[2:3] == [b"HTTP/1.0"] and b"keep-alive" not in closing):
                return


async def _serve(addresses: list[tuple[str, int]]) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, ValueError):
            await _Connection(reader, writer).run()
        writer.close()

    servers = [await asyncio.start_server(handle, host, port, reuse_address=True) for host, port in addresses]
    print("listening", flush=True)
    await asyncio.gather(*(server.serve_forever() for server in servers))


def site_main() -> None:
    """``python -c 'from tests.security.redteam_desync_kit import site_main; site_main()' ADDRESS:PORT...``"""
    addresses = [(spec.rsplit(":", 1)[0], int(spec.rsplit(":", 1)[1])) for spec in sys.argv[1:]]
    asyncio.run(_serve(addresses))
