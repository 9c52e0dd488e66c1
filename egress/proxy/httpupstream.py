"""The plain-HTTP fast path's server side (`egress.proxy.httpfast`): one connection to the destination, kept
between requests and dialled again when the server closed it while idle, and whole responses read from it.

Nothing here judges: a response is read whole and framed (`egress.proxy.httpwire`) and handed back with its bytes;
the exchange judges it before a byte of it reaches the client. Anything that cannot be framed, or a server that
speaks unasked, ends the exchange (`Closed`) or comes back unframed: never forwarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Final

from egress.proxy import httpwire
from egress.proxy.httpio import Waker, send_all

DIAL_TIMEOUT: Final = 10.0
READ_SIZE: Final = 256 * 1024


class Stale(Exception):
    """The server closed before a byte of its answer: on a kept connection, it had closed it while idle."""


class Closed(Exception):
    """The connection ended (either side) or was closed by a judgement: nothing is handed off."""


Known = Callable[[bytes], "httpwire.Response | None"]
"""A response's bytes → its framing when this exact exchange was judged clean before (`Judge.judged`), else None."""


class Upstream:
    """The connection to one destination, opened at the first request."""

    __slots__ = ("dst", "sock", "ready")

    def __init__(self, dst: tuple[str, int]) -> None:
        self.dst = dst
        self.sock: socket.socket | None = None
        self.ready: Waker | None = None

    async def dial(self, loop: asyncio.AbstractEventLoop, again: bool = False) -> bool:
        """Connect, unless the connection is open and was silent since its last response (a server that closed
        an idle connection gets a new one; one that sent what nobody asked for ends the exchange). True when the
        open connection is kept; ``again``: a new one whatever."""
        if self.sock is not None and self.ready is not None:
            idle: bytes | None = b""
            if self.ready.ready and not again:
                try:
                    idle = self.sock.recv(1, socket.MSG_PEEK)
                except BlockingIOError:
                    idle = None
                except OSError:  # reset
                    idle = b""
                if idle:
                    raise Closed("the server sent bytes nobody asked for")
            if not again and (idle is None or not self.ready.ready):
                self.ready.ready = False
                return True
            self.close()
        family = socket.AF_INET6 if ":" in self.dst[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        await asyncio.wait_for(loop.sock_connect(sock, self.dst), DIAL_TIMEOUT)
        self.ready = Waker(loop, sock)
        return False

    async def send(self, loop: asyncio.AbstractEventLoop, raw: bytes) -> None:
        """Send a judged request; `Stale` when the server had closed the connection."""
        assert self.sock is not None
        try:
            await send_all(loop, self.sock, raw)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise Stale from exc

    async def response(self, method: str, known: Known) -> tuple[bytes, httpwire.Response | None, bool]:
        """The whole response: its bytes, its framing (None when it cannot be framed) and whether this exchange
        was judged clean before. `Stale` when the server closed without a byte; `Closed` when it sent more than
        its response."""
        assert self.sock is not None and self.ready is not None
        buffer, need = bytearray(), 0
        while True:
            await self.ready.wait()
            try:
                chunk = self.sock.recv(READ_SIZE)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                chunk = b""
            ended = not chunk
            if ended and not buffer:
                raise Stale
            buffer += chunk
            need = need or httpwire.wanted(buffer)
            if len(buffer) < need and not ended:
                continue  # a Content-Length body still arriving: parse once it is all there
            data = bytes(buffer)
            judged = known(data)
            if judged is not None:
                return data, judged, True
            response = httpwire.parse_response(data, method, ended)
            if isinstance(response, httpwire.Response):
                if len(data) > response.size:
                    raise Closed("the server sent more than its response")
                return data, response, False
            if response is httpwire.UNSURE or ended:
                return data, None, False

    def shutdown(self) -> None:
        """Both directions shut (a connection the policy now forbids), the socket left for `close`."""
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        if self.ready is not None:
            self.ready.close()
        if self.sock is not None:
            self.sock.close()
        self.sock = self.ready = None
