"""The front's relay on its two sockets: both directions of one connection moved by reader and writer callbacks on
the raw non-blocking sockets, registered on the front's own epoll (`egress.proxy.poller`; no asyncio transports,
handles or selector keys: a new connection costs two ``epoll_ctl`` and the reads and writes, nothing more), each
chunk shown to the connection's `egress.proxy.relay.Watch` before it is sent on; once the watch has read all it
reads of the connection (`Watch.finished`: the TLS shape watcher is done, after its first
`egress.detect.tlsshape.MAX_RECORDS` records once the server said a ServerHello; client bytes that are no TLS
record close the relay instead: red team 12b), each direction moves its bytes
with splice(2) through a pipe of its own, never copied into Python: the first `BIG_PIPES` such directions of a
process in a thread each (`_Direction._pump`: poll(2) and splice(2) with the GIL released, none of the event
loop's work per wake-up), the others in the loop's callbacks.

Back-pressure: a direction whose destination does not take everything stops reading its source until what is
left went out. Half-close: a source's end of stream is passed on as ``shutdown(SHUT_WR)`` once its bytes went
out; the relay closes when both directions ended. Fail closed: a watch that says no, an error on either socket
or pipe, or a bug in a callback or a direction's thread closes both sides at once; nothing is forwarded
unwatched. A thread touches only its own direction's state and descriptors; what involves the other direction
(the end passed on, a close) it hands to the loop, and the relay's close stops it before closing a descriptor.

Closing: only a relay both of whose directions ended (each end passed on, everything sent on) closes gracefully;
every other close (a watch that says no, an error, a connection the policy no longer allows:
`egress.proxy.openflows`) aborts both sides, ``SO_LINGER`` zero, so the kernel sends a reset and drops what the
destination side's send buffer still held, instead of sending it on after the close. The destination side has
that linger from the start (`Relay.__init__`), so a worker that dies (its sockets closed by the kernel) resets
its connections too: red team 7 (tests/security/test_redteam_splice_close.py) had up to the send buffer's
megabytes of an upload cross after the cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import select
import socket
import struct
import threading
from collections.abc import Callable
from typing import ClassVar, Final, cast

from egress.proxy.poller import Poller
from egress.proxy.relay import Watch

log = logging.getLogger("egress.proxy")

CHUNK: Final = 256 * 1024
"""Bytes read per wake-up of a direction while the watch reads; asyncio's own read size."""
PIPE_SIZE: Final = 1024 * 1024
"""A splicing direction's pipe capacity and what it splices per wake-up (``F_SETPIPE_SZ``; the default
``/proc/sys/fs/pipe-max-size``): half the wake-ups and splice calls per MiB of 256 KiB under bulk
(docs/gateway-performance.md); for `BIG_PIPES` directions at a time, the others get `SMALL_PIPE_SIZE`; the
kernel's default 64 KiB is kept where it refuses."""
SMALL_PIPE_SIZE: Final = 256 * 1024
BIG_PIPES: Final = 8
"""Splicing directions per process with a `PIPE_SIZE` pipe, and a thread of their own, at once. The kernel charges
a pipe's capacity to its user (uid 0 for the gateway: every root process of the host), and past
``/proc/sys/fs/pipe-user-pages-soft`` (16,384 pages, 64 MiB) a process without ``CAP_SYS_RESOURCE`` (the gateway
unit has ``CAP_NET_ADMIN`` only) gets pipes of two pages: 1 MiB pipes for every direction would reach it at 32
splicing connections, 256 KiB ones at 128; with this bound, two workers reach it at about 104. The threads are
bounded with them: at most this many per process, each idle in poll(2) while its connection is."""
SANDBOX_CONGESTION: Final = b"cubic"
"""TCP congestion control of the sandbox side's sockets (`sandbox_side`): the sandbox's link is the gateway's
local one (a veth, a bridge), where a host default chosen for long paths (BBR) only adds its pacing timer; with
BBR the machine's default, a bulk transfer through the front cost 10-20 % more gateway CPU per MiB and ran
slower (docs/gateway-performance.md). The destination side keeps the host's default."""
_SPLICE: Final = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_ABORT: Final = struct.pack("ii", 1, 0)
"""``struct linger`` on, zero seconds: ``close`` sends a reset and drops the send buffer (socket(7))."""
_GRACEFUL: Final = struct.pack("ii", 0, 0)
"""``struct linger`` off: ``close`` sends what is left, then the end (the default)."""
_F_SETPIPE_SZ: Final = 1031  # linux/fcntl.h; fcntl.F_SETPIPE_SZ exists from Python 3.10 on Linux only


def sandbox_side(listener: socket.socket) -> None:
    """Give ``listener``, and so each connection it accepts, `SANDBOX_CONGESTION` (before ``listen``); where the
    kernel has no such algorithm or does not let this process choose it, the host's default stays."""
    with contextlib.suppress(OSError):
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, SANDBOX_CONGESTION)


async def dial(address: tuple[str, int], timeout: float | None = None) -> socket.socket:
    """A non-blocking TCP socket connected to ``address`` (numeric), with Nagle off like the client's side (small
    records, the handshake's, must not wait for a delayed ACK); `TimeoutError` after ``timeout`` seconds.

    The connect waits on the loop's writer callback itself (asyncio's ``sock_connect`` and ``wait_for`` cost a
    future, a task-like timeout and checks per connection: a tenth of the front's Python time per relay)."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.connect(address)
        except (BlockingIOError, InterruptedError):
            await _connected(sock, timeout)
    except BaseException:
        sock.close()
        raise
    return sock


async def _connected(sock: socket.socket, timeout: float | None) -> None:
    """Wait until ``sock``'s non-blocking connect finished; raise its error (`OSError`) or `TimeoutError`."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def settle(error: BaseException | None) -> None:
        if not done.done():
            done.set_exception(error) if error is not None else done.set_result(None)

    loop.add_writer(fd, settle, None)
    timer = loop.call_later(timeout, settle, TimeoutError()) if timeout is not None else None
    try:
        await done
    finally:
        loop.remove_writer(fd)
        if timer is not None:
            timer.cancel()
    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        raise OSError(error, f"connect to {sock.family.name} peer: {os.strerror(error)}")


def _linger(sock: socket.socket, linger: bytes) -> None:
    with contextlib.suppress(OSError):  # a socket already reset: there is nothing left to send
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)


class Relay:
    """One relayed connection: the client's socket and the destination's, both non-blocking and connected."""

    def __init__(
        self,
        client: socket.socket,
        upstream: socket.socket,
        watch: Watch | None,
        splice: bool = True,
        loop: Poller | None = None,
    ):
        """``client``: an accepted socket with the default linger (off: `close` sets only what differs from it);
        ``splice``: move a direction's bytes with splice(2) once ``watch`` is finished (or from the start without a
        watch); False keeps every byte on recv/send (tests compare the two); ``loop``: where the sockets' callbacks
        are registered (the front's `egress.proxy.poller.Poller`; default: the running event loop's own)."""
        self.loop: Poller | asyncio.AbstractEventLoop = loop if loop is not None else asyncio.get_running_loop()
        self.watch = watch
        self.splice = splice
        self.up = _Direction(self, client, upstream, from_client=True)
        """Client to destination; its ``moved``: the bytes the client sent."""
        self.down = _Direction(self, upstream, client, from_client=False)
        self.closed = False
        self.stop: int | None = None
        """An eventfd that wakes the directions' threads when the relay closes (made with the first thread)."""
        self.on_lost: Callable[[], None] | None = None
        """Called once when the relay closes (the front forgets it: `egress.proxy.openflows`)."""
        _linger(upstream, _ABORT)  # whatever ends this process, nothing it holds goes out after

    def start(self) -> None:
        """Start reading both sides, and relay the client's first bytes (the ClientHello peeked before, there
        already) at once instead of at the loop's next turn: a wake-up less per connection."""
        self.up.resume()
        self.down.resume()
        self.up._guarded(self.up._readable)

    def close(self, graceful: bool = False) -> None:
        """Close both sides (and the pipes); idempotent. Aborted (a reset each way, the send buffers dropped)
        unless ``graceful`` (both directions ended, everything sent on: the buffers go out, then the end). A
        direction's thread, if any, is stopped first (it touches no descriptor after this returns)."""
        if self.closed:
            return
        self.closed = True
        if self.stop is not None:
            os.eventfd_write(self.stop, 1)
        for direction in (self.up, self.down):
            direction.release()
        if self.stop is not None:
            os.close(self.stop)
            self.stop = None
        # Only the linger that differs from what each side has is set (a syscall less per connection): the
        # destination side has _ABORT from the start, the client's side the default, off.
        if graceful:
            _linger(self.down.src, _GRACEFUL)
        else:
            _linger(self.up.src, _ABORT)
        for sock in (self.up.src, self.down.src):
            sock.close()
        if self.on_lost is not None:
            self.on_lost()
        # Each direction refers to the relay, and the relay to them: a cycle that would keep the connection's objects
        # (its sockets, the watch and its records) for the collector's next pass, instead of freeing them now.
        self.on_lost = None
        self.up.relay = self.down.relay = cast(Relay, _CLOSED)


class _Closed:
    """What a closed relay's directions refer to instead of it (`Relay.close`): all that may still ask is whether it
    is closed (a direction's callback or thread's hand-off that was already on its way)."""

    closed: Final = True


_CLOSED: Final = _Closed()


class _Direction:
    """One direction of a relay: what ``src`` sends goes to ``dst``."""

    big_pipes: ClassVar[int] = 0
    """`PIPE_SIZE` pipes open in this process (`BIG_PIPES`)."""

    def __init__(self, relay: Relay, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        self.relay = relay
        self.src, self.dst = src, dst
        self.from_client = from_client
        self.moved = 0
        """Bytes read from ``src``."""
        self.pending = b""
        """Read, shown to the watch, not yet taken by ``dst``."""
        self.pipe: tuple[int, int] | None = None
        """(read end, write end) once the direction splices."""
        self.pipe_size = 0
        """What ``pipe`` splices per wake-up (its capacity as asked)."""
        self.piped = 0
        """Bytes in the pipe not yet taken by ``dst``."""
        self.eof = False
        """``src`` ended."""
        self.shut = False
        """``dst`` was told the end (``shutdown(SHUT_WR)``)."""
        self.reading = False
        self.writing = False
        self.thread: threading.Thread | None = None
        """Moves the bytes once the direction splices with a `PIPE_SIZE` pipe (`_pump`)."""

    def resume(self) -> None:
        if not self.reading and not self.eof and not self.relay.closed:
            self.relay.loop.add_reader(self.src.fileno(), self._guarded, self._readable)
            self.reading = True

    def _pause(self) -> None:
        if self.reading:
            self.relay.loop.remove_reader(self.src.fileno())
            self.reading = False

    def release(self) -> None:
        """Stop both callbacks or the thread, and close the pipe (the relay closes the sockets)."""
        if self.thread is not None:
            if self.thread is not threading.current_thread():
                self.thread.join()
            self.thread = None
            self.reading = self.writing = False
        self._pause()
        if self.writing:
            self.relay.loop.remove_writer(self.dst.fileno())
            self.writing = False
        if self.pipe is not None:
            for end in self.pipe:
                os.close(end)
            self.pipe = None
            if self.pipe_size == PIPE_SIZE:
                _Direction.big_pipes -= 1

    def _guarded(self, step: Callable[[], None]) -> None:
        """Run ``step``; a socket error or a bug closes both sides (fail closed)."""
        if self.relay.closed:
            return
        try:
            step()
        except (BlockingIOError, InterruptedError):
            pass  # a spurious wake-up: wait for the next
        except OSError as exc:  # reset, broken pipe, or the like
            log.debug("relay: %s: closed", exc)
            self.relay.close()
        except Exception:
            log.exception("relay: error: both sides closed")
            self.relay.close()

    def _readable(self) -> None:
        if self.pipe is not None:
            got = os.splice(self.src.fileno(), self.pipe[1], self.pipe_size, flags=_SPLICE)
            if got == 0:
                self._end()
                return
            self.moved += got
            self.piped += got
            self._flush()
            return
        data = self.src.recv(CHUNK)
        if not data:
            self._end()
            return
        self.moved += len(data)
        watch = self.relay.watch
        if watch is not None and not watch.passes(self.from_client, data):
            self.relay.close()
            return
        self.pending = data
        if self._flush() and self.relay.splice and (watch is None or watch.finished):
            self._open_pipe()
            if self.pipe_size == PIPE_SIZE:
                self._start_thread()

    def _flush(self) -> bool:
        """Send what is waiting for ``dst``; True when all went out, else wait until ``dst`` takes more."""
        try:
            if self.pending:
                sent = self.dst.send(self.pending)
                self.pending = self.pending[sent:]
            while self.piped and not self.pending:
                assert self.pipe is not None
                self.piped -= os.splice(self.pipe[0], self.dst.fileno(), self.piped, flags=_SPLICE)
        except BlockingIOError:
            pass
        if self.pending or self.piped:
            self._pause()
            if not self.writing:
                self.relay.loop.add_writer(self.dst.fileno(), self._guarded, self._writable)
                self.writing = True
            return False
        return True

    def _writable(self) -> None:
        if not self._flush():
            return
        self.relay.loop.remove_writer(self.dst.fileno())
        self.writing = False
        if self.eof:
            self._shutdown()
        else:
            self.resume()

    def _open_pipe(self) -> None:
        read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.pipe = (read_end, write_end)
        self.pipe_size = PIPE_SIZE if _Direction.big_pipes < BIG_PIPES else SMALL_PIPE_SIZE
        if self.pipe_size == PIPE_SIZE:
            _Direction.big_pipes += 1
        with contextlib.suppress(OSError):  # a smaller pipe only costs more wake-ups
            fcntl.fcntl(write_end, _F_SETPIPE_SZ, self.pipe_size)

    def _end(self) -> None:
        self.eof = True
        self._pause()
        if not self.writing:
            self._shutdown()

    def _shutdown(self) -> None:
        self.shut = True
        other = self.relay.down if self is self.relay.up else self.relay.up
        if other.shut:  # both ended and everything went out: closing says the rest, without a shutdown first
            self.relay.close(graceful=True)
            return
        self.dst.shutdown(socket.SHUT_WR)

    def _start_thread(self) -> None:
        """Move this direction's bytes in a thread of its own from now on (`_pump`), off the event loop; where no
        thread can be started, the loop goes on splicing it."""
        relay = self.relay
        if relay.stop is None:
            relay.stop = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        thread = threading.Thread(target=self._pump, args=(relay.stop,), name="egress-splice", daemon=True)
        self._pause()
        try:
            thread.start()
        except RuntimeError:  # no thread to be had (a limit on tasks): the loop's callbacks as before
            log.warning("relay: no splice thread could be started: spliced on the event loop")
            self.resume()
            return
        self.thread = thread

    def _pump(self, stop: int) -> None:
        """The thread: splice what ``src`` has into the pipe, then all of it into ``dst``, and again; wait in
        poll(2), the GIL released, where either would block (the pipe is empty before ``src`` is read again:
        back-pressure). The end of ``src`` (everything sent on), an error or a bug is handed to the event loop;
        the relay's close wakes the thread through ``stop`` and waits for it before closing any descriptor."""
        relay, pipe = self.relay, self.pipe
        assert pipe is not None
        src, dst, size = self.src.fileno(), self.dst.fileno(), self.pipe_size
        readable, writable = select.poll(), select.poll()
        readable.register(src, select.POLLIN)
        writable.register(dst, select.POLLOUT)
        for poll in (readable, writable):
            poll.register(stop, select.POLLIN)
        then: Callable[[], None] = self._pumped
        try:
            while not relay.closed:
                try:
                    got = os.splice(src, pipe[1], size, flags=_SPLICE)
                except BlockingIOError:
                    self.reading, self.writing = True, False
                    readable.poll()
                    continue
                if got == 0:
                    break
                self.moved += got
                while got and not relay.closed:
                    try:
                        got -= os.splice(pipe[0], dst, got, flags=_SPLICE)
                    except BlockingIOError:
                        self.reading, self.writing = False, True
                        writable.poll()
        except OSError as exc:  # reset, broken pipe, or the like
            log.debug("relay: %s: closed", exc)
            then = relay.close
        except Exception:
            log.exception("relay: error: both sides closed")
            then = relay.close
        if not relay.closed:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the process is stopping
                relay.loop.call_soon_threadsafe(then)

    def _pumped(self) -> None:
        """On the event loop: the thread saw the end of ``src``, everything sent on; pass the end on."""
        if self.relay.closed:
            return
        self.thread = None
        self.reading = self.writing = False
        self.eof = True
        self._guarded(self._shutdown)
