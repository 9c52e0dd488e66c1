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

mitmproxy dials its server connections with ``asyncio.open_connection``, named through its server module's
``asyncio``; `install_dial` gives that module egress's `open_connection` (the rest of asyncio unchanged), which arms
the connection as its transport is made, not at ``server_connected``: a pool that pushed its job and reset before the
transport existed left it no peer name (asyncio asks ``getpeername`` once, and a reset socket is no longer
connected), mitmproxy's dial then failed its ``assert peername``, its task died without a hook or a log line, and
the client's handler waited for a dial that never completed, the job unread and nothing recorded (red team 16,
``push-then-reset``). The dialled address now names the peer such a socket cannot, and the stream it reads ends at
the reset after the job, which the detectors judge.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import types
from collections.abc import Callable
from typing import Any, Final, Protocol

from mitmproxy import connection
from mitmproxy.proxy import server as mitm_server
from mitmproxy.proxy.server import ConnectionHandler
from mitmproxy.proxy.server_hooks import ServerConnectionHookData

log = logging.getLogger("egress.proxy")

ABORT: Final = struct.pack("ii", 1, 0)
"""``struct linger`` on, zero seconds: a close sends a reset and drops the socket's send buffer (socket(7))."""
GRACEFUL: Final = struct.pack("ii", 0, 0)
"""``struct linger`` off (the default): a close sends what is left, then the end."""
STREAM_LIMIT: Final = 64 * 1024
"""The stream reader's buffer limit: asyncio's default, as ``asyncio.open_connection`` gives mitmproxy."""


class _Settable(Protocol):
    def setsockopt(self, level: int, option: int, value: bytes, /) -> None: ...

    def fileno(self) -> int: ...


def set_linger(sock: _Settable, linger: bytes) -> None:
    with contextlib.suppress(OSError):  # a socket already reset or closed: there is nothing left to send
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)


class _Ending(asyncio.Protocol):
    """Stands between an armed connection's transport and its stream protocol (every event passed on): takes the
    linger off as the transport closes gracefully, unless egress severed it (`abort`)."""

    def __init__(self, inner: asyncio.Protocol, sock: _Settable | None = None) -> None:
        self.inner = inner
        self.sock = sock
        """None until the transport is made (`open_connection`'s: the protocol stands from its start)."""
        self.severed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.sock is None:
            self.sock = transport.get_extra_info("socket")
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
        if exc is None and not self.severed and self.sock is not None:
            set_linger(self.sock, GRACEFUL)
        # A server's reset ends its stream after the bytes it sent, as a FIN does (red team 16): asyncio's reader
        # raises a connection's error before the bytes it holds, and a write that meets the reset closes the
        # transport without reading what the kernel still holds; either way a pool's answer (a job pushed, a
        # login's result) was dropped unjudged and unrecorded. Read and judged, the answer reaches the client only
        # if a FIN's would.
        if isinstance(exc, ConnectionError):
            for data in _unread(self.sock) if self.sock is not None else ():
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
    if isinstance(transport.get_protocol(), _Ending):
        return True  # armed as it was made (`open_connection`), whatever has become of it since
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


class _Dialled(asyncio.StreamWriter):
    """The writer of a connection `open_connection` made: its peer named by the dialled address when the socket,
    reset before the transport was made, names none."""

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        protocol: asyncio.StreamReaderProtocol,
        reader: asyncio.StreamReader,
        loop: asyncio.AbstractEventLoop,
        dialled: tuple[str, int],
    ) -> None:
        super().__init__(transport, protocol, reader, loop)
        self.dialled = dialled

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        found = super().get_extra_info(name, default)
        if name == "peername" and found is None:
            return self.dialled
        return found


async def open_connection(host: str, port: int, **kwargs: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``asyncio.open_connection`` as mitmproxy's server connections get it (`install_dial`): the connection armed as
    its transport is made (`_Ending` from the first event, ``SO_LINGER`` zero; one that cannot be armed is closed
    and the dial fails), and its peer named by ``(host, port)`` when the socket no longer names one: the server
    reset it before the transport was made (the bytes it sent are still read, then the end)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
    inner = asyncio.StreamReaderProtocol(reader, loop=loop)
    ending = _Ending(inner)
    transport, _ = await loop.create_connection(lambda: ending, host, port, **kwargs)
    sock = transport.get_extra_info("socket")
    try:
        if sock is None:
            raise OSError("the connection has no socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, ABORT)
    except OSError:
        ending.severed = True
        transport.abort()  # fail closed: a connection that would end gracefully on a death is not used
        raise
    assert isinstance(transport, asyncio.WriteTransport)
    return reader, _Dialled(transport, inner, reader, loop, (host, port))


class _Asyncio(types.ModuleType):
    """asyncio as mitmproxy's server module sees it once `install_dial` ran: `open_connection` egress's, the rest
    asyncio's own."""

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)


def install_dial() -> None:
    """Give mitmproxy's server connections egress's dial (`open_connection`); idempotent, for the process's life
    (for a connection asyncio's own dial serves, it changes only when the linger is set)."""
    if isinstance(getattr(mitm_server, "asyncio", None), _Asyncio):
        return
    shim = _Asyncio("asyncio", "asyncio with egress's open_connection (egress.proxy.mitm.linger)")
    shim.open_connection = open_connection  # type: ignore[attr-defined]
    setattr(mitm_server, "asyncio", shim)  # noqa: B010  # mitmproxy's module global, typed as the module


class Lingers:
    """The addon: arms each of mitmproxy's server connections as it connects (`arm`). ``handler_of``: a client's
    mitmproxy connection handler (None once it is gone)."""

    def __init__(self, handler_of: Callable[[connection.Client], ConnectionHandler | None]) -> None:
        self.handler_of = handler_of

    @classmethod
    def install(cls, handler_of: Callable[[connection.Client], ConnectionHandler | None]) -> Lingers:
        """The addon, with egress's dial given to mitmproxy's server connections (`install_dial`)."""
        install_dial()
        return cls(handler_of)

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
