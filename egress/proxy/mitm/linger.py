"""mitmproxy's server connections reset when their worker dies: ``SO_LINGER`` zero from connect to a graceful end.

A process's death closes its sockets as close(2) does: the kernel sends what each send buffer still holds, then the
end. A server connection of mitmproxy's held what a site had not read yet of an upload (381-579 KB of a WebSocket
upload crossed after its worker was killed: red team 7, tests/security/test_redteam_splice_close.py). `Lingers`
(an addon) sets ``SO_LINGER`` zero on each server connection as mitmproxy reports it connected (``server_connected``:
before mitmproxy writes a byte to it), so a death resets it and the kernel drops what it holds, as the front's
relays do (`egress.proxy.splice`).

The linger is taken off again where mitmproxy ends a connection gracefully, so what it sent before an orderly close
still arrives whole: at the transport's ``connection_lost`` after its ``close()`` (mitmproxy's ``writer.close()``),
once asyncio has written out its buffer and just before it closes the socket (`_Ending`). A severing by egress
(`abort`: a block, ``close_forbidden``, the idle timeout) keeps the reset; so does a transport's fatal error.

The same stand-in ends a server's stream at its reset after the bytes it sent, as a FIN ends it (red team 16):
asyncio's reader raises a connection's error before the bytes it holds, and a write that meets the reset closes the
transport with what the kernel still holds unread, so a pool that answered and reset at once had its answer
dropped by mitmproxy, judged by no detector and recorded nowhere. Now what the reader holds is read first, and what
the kernel holds is read into it at the reset (`_unread`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Callable
from typing import Final, Protocol

from mitmproxy import connection
from mitmproxy.proxy.server import ConnectionHandler
from mitmproxy.proxy.server_hooks import ServerConnectionHookData

log = logging.getLogger("egress.proxy")

ABORT: Final = struct.pack("ii", 1, 0)
"""``struct linger`` on, zero seconds: a close sends a reset and drops the socket's send buffer (socket(7))."""
GRACEFUL: Final = struct.pack("ii", 0, 0)
"""``struct linger`` off (the default): a close sends what is left, then the end."""


class _Settable(Protocol):
    def setsockopt(self, level: int, option: int, value: bytes, /) -> None: ...

    def fileno(self) -> int: ...


def set_linger(sock: _Settable, linger: bytes) -> None:
    with contextlib.suppress(OSError):  # a socket already reset or closed: there is nothing left to send
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)


class _Ending(asyncio.Protocol):
    """Stands between an armed connection's transport and its stream protocol (every event passed on): takes the
    linger off as the transport closes gracefully, unless egress severed it (`abort`)."""

    def __init__(self, inner: asyncio.Protocol, sock: _Settable) -> None:
        self.inner = inner
        self.sock = sock
        self.severed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        # None: the transport's close() (its buffer written out) or its abort(); abort is egress's severing, which
        # marks it first. An error (a reset, a failed write) leaves nothing worth sending.
        if exc is None and not self.severed:
            set_linger(self.sock, GRACEFUL)
        # A server's reset ends its stream after the bytes it sent, as a FIN does (red team 16): asyncio's reader
        # raises a connection's error before the bytes it holds, and a write that meets the reset closes the
        # transport without reading what the kernel still holds; either way a pool's answer (a job pushed, a
        # login's result) was dropped unjudged and unrecorded. Read and judged, the answer reaches the client only
        # if a FIN's would.
        if isinstance(exc, ConnectionError):
            for data in _unread(self.sock):
                self.inner.data_received(data)
            exc = None
        self.inner.connection_lost(exc)


def _unread(sock: _Settable) -> list[bytes]:
    """What the kernel still holds of a reset connection's received bytes (Linux keeps them readable after the
    reset; asyncio stops reading at a write's error), read through a duplicate of its descriptor: the transport
    closes the socket itself after `connection_lost`. Bounded by the socket's receive buffer."""
    chunks: list[bytes] = []
    try:
        dup = socket.socket(fileno=os.dup(sock.fileno()))
    except OSError:
        return chunks
    with dup:
        dup.setblocking(False)
        while True:
            try:
                data = dup.recv(65536)
            except OSError:  # nothing more (EAGAIN), or only the error is left
                break
            if not data:
                break
            chunks.append(data)
    return chunks


def arm(writer: object) -> bool:
    """Make ``writer``'s connection (an asyncio stream's) reset if this process dies, until it closes gracefully.
    False: not an open asyncio stream (nothing done)."""
    if not isinstance(writer, asyncio.StreamWriter):
        return False
    transport = writer.transport
    sock = transport.get_extra_info("socket")
    if sock is None or transport.is_closing():
        return False
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORT)
    transport.set_protocol(_Ending(transport.get_protocol(), sock))  # type: ignore[arg-type]
    return True


def abort(writer: object) -> None:
    """Drop what ``writer`` (an asyncio stream's) has not sent yet and reset its connection: egress cut it. Anything
    else is left to mitmproxy's close."""
    if not isinstance(writer, asyncio.StreamWriter):
        return
    transport = writer.transport
    ending = transport.get_protocol()
    if isinstance(ending, _Ending):
        ending.severed = True
    sock = transport.get_extra_info("socket")
    if sock is not None:
        set_linger(sock, ABORT)
    transport.abort()


class Lingers:
    """The addon: arms each of mitmproxy's server connections as it connects (`arm`). ``handler_of``: a client's
    mitmproxy connection handler (None once it is gone)."""

    def __init__(self, handler_of: Callable[[connection.Client], ConnectionHandler | None]) -> None:
        self.handler_of = handler_of

    def server_connected(self, data: ServerConnectionHookData) -> None:
        handler = self.handler_of(data.client)
        streams = handler.transports.get(data.server) if handler is not None else None
        if streams is None or streams.writer is None:
            return  # already gone
        try:
            if arm(streams.writer):
                return
            why = "not an open asyncio stream"
        except OSError as exc:
            why = str(exc)
        log.warning("egress: a server connection's linger could not be set (%s); closed", why)
        abort(streams.writer)  # fail closed: a connection that would end gracefully on a death is not used
