"""Socket waiting and writing for the plain-HTTP fast path (`egress.proxy.httpfast`): a readiness waker that
stays registered between requests, a send that writes at once when it can, a wait for a full send buffer to take
more, and a close that does not reset."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Final

DRAIN: Final = 256 * 1024
"""Bytes read (and dropped) per call while closing gently."""


class Waker:
    """Wakes a coroutine when a socket is readable, its reader left registered between waits (no ``epoll_ctl``
    per request). Readiness nobody waits for disarms it (epoll is level-triggered: unread bytes would wake the
    loop again and again) and is remembered in ``ready``."""

    __slots__ = ("loop", "fd", "armed", "waiter", "ready")

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self.loop = loop
        self.fd = sock.fileno()
        self.armed = False
        self.waiter: asyncio.Future[None] | None = None
        self.ready = False

    def _fire(self) -> None:
        if self.waiter is not None:
            if not self.waiter.done():
                self.waiter.set_result(None)
            return  # woken already: the waiting coroutine reads when it runs
        self.ready = True
        self.close()

    async def wait(self, timeout: float | None = None) -> None:
        """Until the socket is readable (or ``timeout`` seconds pass)."""
        if self.ready:
            self.ready = False
            return
        if not self.armed:
            self.loop.add_reader(self.fd, self._fire)
            self.armed = True
        self.waiter = self.loop.create_future()
        try:
            if timeout is None:
                await self.waiter
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self.waiter), timeout)
        finally:
            self.waiter = None

    def close(self) -> None:
        if self.armed:
            self.loop.remove_reader(self.fd)
            self.armed = False


async def send_all(loop: asyncio.AbstractEventLoop, sock: socket.socket, data: bytes) -> None:
    """All of ``data``: at once when the socket takes it (mostly), else as it drains."""
    try:
        sent = sock.send(data)
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        await loop.sock_sendall(sock, data[sent:])


async def writable(loop: asyncio.AbstractEventLoop, sock: socket.socket, ready: asyncio.Future[None]) -> None:
    """Until ``sock`` can take more (its send buffer is full now: the peer reads slowly, or not at all), or
    ``ready`` is done by whoever else may end the wait (a cut)."""
    fd = sock.fileno()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_writer(fd, wake)
    try:
        await ready
    finally:
        loop.remove_writer(fd)


def close_gently(conn: socket.socket) -> None:
    """Close after a FIN, with what the client sent and nobody will read dropped first: a close with unread bytes
    is a reset, which can destroy the last answer (a 403, or the response before a ``Connection: close``) before
    the client read it."""
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_WR)
        for _ in range(16):
            if not conn.recv(DRAIN):
                break
    conn.close()
