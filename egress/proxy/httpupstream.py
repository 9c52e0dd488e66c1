"""The plain-HTTP fast path's server side (`egress.proxy.httpfast`): one connection to the destination, kept
between requests and dialled again when the server closed it while idle, and whole responses read from it.

Nothing here judges: a response is read whole and framed (`egress.proxy.httpwire`) and handed back with its bytes;
the exchange judges it before a byte of it reaches the client. Anything that cannot be framed, or a server that
speaks unasked, ends the exchange (`Closed`) or comes back unframed: never forwarded.

Closing: the connection has ``SO_LINGER`` zero from its connect, as the front's relay's destination side
(`egress.proxy.splice.Relay`), so a worker that dies resets it and nothing it holds goes out after; `close` takes
the linger off for a graceful end, unless the connection was cut (`abort`: a policy that no longer allows it, the
lockdown, the idle timeout, a block) or the server broke the exchange, when the close is a reset and what the send
buffer still holds is dropped (red team 7: tests/security/test_redteam_fastpath_cut.py). A cut connection is never
dialled again. ``since`` tells the exchange's idle sweep how long the server has made no progress on the request
under way (a byte taken or sent: mitmproxy's watch's measure).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Final

from egress.proxy import httpwire
from egress.proxy.httpio import Waker, writable
from egress.proxy.splice import _ABORT, _GRACEFUL, _linger

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

    __slots__ = ("dst", "clock", "sock", "ready", "since", "aborted", "broken", "writing")

    def __init__(self, dst: tuple[str, int], clock: Callable[[], float]) -> None:
        """``clock``: the exchange's (monotonic), for ``since``."""
        self.dst = dst
        self.clock = clock
        self.sock: socket.socket | None = None
        self.ready: Waker | None = None
        self.since: float | None = None
        """While a request is sent or its answer awaited: since when (``clock``) the server made no progress (took
        no byte of the request, sent none of its answer); None otherwise."""
        self.aborted = False
        """Cut (`abort`): nothing more is sent or dialled, and the close is a reset."""
        self.broken = False
        """The server broke the exchange (bytes nobody asked for): the close is a reset."""
        self.writing: asyncio.Future[None] | None = None
        """Done when the server's side can take more of a request, or when cut."""

    async def dial(self, loop: asyncio.AbstractEventLoop, again: bool = False) -> bool:
        """Connect, unless the connection is open and was silent since its last response (a server that closed
        an idle connection gets a new one; one that sent what nobody asked for ends the exchange). True when the
        open connection is kept; ``again``: a new one whatever. `Closed` once cut."""
        if self.aborted:
            raise Closed("cut")
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
                    self.broken = True
                    raise Closed("the server sent bytes nobody asked for")
            if not again and (idle is None or not self.ready.ready):
                self.ready.ready = False
                return True
            self.close()
        family = socket.AF_INET6 if ":" in self.dst[0] else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _linger(sock, _ABORT)  # whatever ends this process, nothing it holds goes out after (`close` takes it off)
        self.sock = sock
        await asyncio.wait_for(loop.sock_connect(sock, self.dst), DIAL_TIMEOUT)
        self.ready = Waker(loop, sock)
        return False

    async def send(self, loop: asyncio.AbstractEventLoop, raw: bytes) -> None:
        """Send a judged request (at once when the socket takes it, mostly); `Stale` when the server had closed
        the connection, `Closed` once cut. ``since`` from now on: each byte the server takes is progress."""
        sock = self.sock
        assert sock is not None
        if self.aborted:
            raise Closed("cut")
        self.since = self.clock()
        try:
            try:
                sent = sock.send(raw)  # all of it, mostly: no loop, no wait
            except BlockingIOError:
                sent = 0
            left = memoryview(raw)[sent:]
            while left:
                self.writing = loop.create_future()
                try:
                    await writable(loop, sock, self.writing)  # the server reads slowly, or not at all: swept
                finally:
                    self.writing = None
                if self.aborted:
                    raise Closed("cut")
                with contextlib.suppress(BlockingIOError):
                    sent = sock.send(left)
                    self.since, left = self.clock(), left[sent:]
        except (BrokenPipeError, ConnectionResetError) as exc:
            if self.aborted:
                raise Closed("cut") from exc
            raise Stale from exc

    async def response(self, method: str, known: Known) -> tuple[bytes, httpwire.Response | None, bool]:
        """The whole response: its bytes, its framing (None when it cannot be framed) and whether this exchange
        was judged clean before. `Stale` when the server closed without a byte; `Closed` when it sent more than
        its response."""
        assert self.sock is not None and self.ready is not None
        buffer, need = bytearray(), 0
        while True:
            await self.ready.wait()
            if self.aborted:
                raise Closed("cut")
            try:
                chunk = self.sock.recv(READ_SIZE)
            except BlockingIOError:
                continue
            except ConnectionResetError:
                chunk = b""
            ended = not chunk
            if ended and not buffer:
                raise Stale
            self.since = self.clock()
            buffer += chunk
            need = need or httpwire.wanted(buffer)
            if len(buffer) < need and not ended:
                continue  # a Content-Length body still arriving: parse once it is all there
            data = bytes(buffer)
            judged = known(data)
            if judged is not None:
                self.since = None
                return data, judged, True
            response = httpwire.parse_response(data, method, ended)
            if isinstance(response, httpwire.Response):
                if len(data) > response.size:
                    self.broken = True
                    raise Closed("the server sent more than its response")
                self.since = None
                return data, response, False
            if response is httpwire.UNSURE or ended:
                self.since = None
                return data, None, False

    def abort(self) -> None:
        """Cut: nothing more is sent or dialled, and the close that follows is a reset that drops what the send
        buffer holds. The exchange's waits on this side are woken (a cut comes from outside its task): a send's at
        once, an answer's by shutting the reading direction only (``SHUT_RD`` sends the server nothing: no end
        before the reset)."""
        self.aborted = True
        if self.writing is not None and not self.writing.done():
            self.writing.set_result(None)
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RD)

    def close(self) -> None:
        """Close: gracefully (the linger taken off) unless cut or broken (`abort`, ``broken``): then a reset."""
        if self.ready is not None:
            self.ready.close()
        if self.sock is not None:
            _linger(self.sock, _ABORT if self.aborted or self.broken else _GRACEFUL)
            self.sock.close()
        self.sock = self.ready = None
        self.since = None
