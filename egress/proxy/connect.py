"""The front's dial without a coroutine: a non-blocking connect whose end is told to a callback.

`connect` starts a TCP connect to a numeric address and calls ``then(sock, None)`` with the connected socket, or
``then(None, error)`` when it failed (`OSError`) or took longer than ``timeout`` (`TimeoutError`): once, from the
event loop, never from inside `connect` itself. The front relays most connections in callbacks alone (accept,
peek, decide, dial, relay): a task and a future per dial were a tenth of its Python time per connection
(docs/gateway-performance.md). Waiting costs one writer registration on the front's `egress.proxy.poller.Poller`
and one of its queued timers; a connected socket's writer is dropped only once ``then`` has had it, so that the
relay's reader replaces it with one ``epoll_ctl(MOD)``.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable

from egress.proxy.poller import Poller, Timer

Then = Callable[[socket.socket | None, BaseException | None], None]
"""Told the connected socket, or the error; called once."""


def connect(loop: Poller, address: tuple[str, int], timeout: float, then: Then) -> None:
    """Dial ``address`` (numeric) non-blocking, Nagle off like the client's side (small records, the
    handshake's, must not wait for a delayed ACK); tell ``then`` how it ended, within ``timeout`` seconds."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK, socket.IPPROTO_TCP)
    except OSError as exc:  # out of descriptors
        loop.call_soon(then, None, exc)
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        code = sock.connect_ex(address)
    except OSError as exc:
        sock.close()
        loop.call_soon(then, None, exc)
        return
    if code not in (errno.EINPROGRESS, errno.EINTR, 0):
        sock.close()
        loop.call_soon(then, None, OSError(code, f"connect to {address[0]}:{address[1]}: {os.strerror(code)}"))
        return
    _Pending(loop, sock, address, timeout, then)


class _Pending:
    """One connect under way: the socket's writer callback ends it, or the timer does."""

    __slots__ = ("loop", "sock", "fd", "address", "then", "timer")

    def __init__(self, loop: Poller, sock: socket.socket, address: tuple[str, int], timeout: float, then: Then) -> None:
        self.loop, self.sock, self.address, self.then = loop, sock, address, then
        self.fd = sock.fileno()
        loop.add_writer(self.fd, self._writable)
        self.timer: Timer | None = loop.call_later(timeout, self._timed_out)

    def _writable(self) -> None:
        self._stop(later=True)  # the kernel's registration stays until `then` is done: see the module docstring
        try:
            try:
                code = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            except OSError as exc:
                code = exc.errno or errno.EIO
            if code:
                self.loop.settle(self.fd)
                self.sock.close()
                address = self.address
                self.then(None, OSError(code, f"connect to {address[0]}:{address[1]}: {os.strerror(code)}"))
                return
            self.then(self.sock, None)
        finally:
            self.loop.settle(self.fd)  # nothing (the relay's reader took it over), or the writer's removal

    def _timed_out(self) -> None:
        self.timer = None
        self._stop()
        self.sock.close()
        self.then(None, TimeoutError(f"connect to {self.address[0]}:{self.address[1]}: timed out"))

    def _stop(self, later: bool = False) -> None:
        self.loop.remove_writer(self.fd, later)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
