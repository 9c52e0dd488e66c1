"""The front's own epoll for its sockets, inside the event loop: one loop callback per wake-up for all of them.

asyncio's selector loop pays, per event and per registration of a descriptor, Python objects and calls the front's
connections do not need: an `asyncio.Handle` per reader or writer registered (and a `KeyError` raised and caught
by ``add_reader``/``add_writer`` for a descriptor it does not know yet), a `selectors.SelectorKey` per change, the
selector's per-event key lookups and the handle's ``_run`` through a `contextvars.Context` per event, and a
`asyncio.TimerHandle` pushed on its heap per dial's timeout. A new connection the front relays makes about ten
such events and six registrations (docs/gateway-performance.md). `Poller` keeps the front's descriptors (its
listeners, the dials under way, the relays' sockets) in an epoll of its own, whose descriptor is the one reader it
registers on the asyncio loop: when any of them is ready the loop runs `Poller._dispatch` once, which reads the
ready descriptors and calls their callbacks directly; a registration is one ``epoll_ctl`` (``MOD`` where the
descriptor is there already: a dial's writer turned into the relay's reader). The loop, mitmproxy's too, stays as
it is: the front still shares its thread and its loop with mitmproxy (a connection handed off never touches the
poller), and ``call_soon``/``call_soon_threadsafe`` are the loop's.

Timers (`Poller.call_later`) are kept in one first-in-first-out queue per delay (every dial has the same timeout,
so each queue is in deadline order) with one loop timer armed for the earliest: a timer is a small object appended
and, when cancelled, marked, instead of a heap entry each.

The callbacks' contract is the loop's: called with the arguments given, on the loop's thread; a callback removed
(or whose descriptor was registered again, for another socket) before its turn within one wake-up is not called;
an error escaping one is reported to the loop's exception handler as the loop does for its own callbacks, and the
others still run (the front's callbacks catch their own errors and close what they serve: fail closed).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import select
import selectors
from collections.abc import Callable
from typing import Any, Final

_IN: Final = select.EPOLLIN
_OUT: Final = select.EPOLLOUT
_READY_IN: Final = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP | select.EPOLLRDHUP
"""Events that wake a reader (as the loop's selector, which reports an error or hang-up to both callbacks)."""
_READY_OUT: Final = select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP
MAX_EVENTS: Final = 256
"""Ready descriptors read per wake-up; more stay ready (level-triggered) for the loop's next turn."""

Callback = Callable[..., object]


class _Entry:
    """One descriptor's callbacks and the events asked for it."""

    __slots__ = ("mask", "reader", "reader_args", "writer", "writer_args")

    def __init__(self) -> None:
        self.mask = 0
        self.reader: Callback | None = None
        self.reader_args: tuple[Any, ...] = ()
        self.writer: Callback | None = None
        self.writer_args: tuple[Any, ...] = ()


class Timer:
    """A `Poller.call_later` timer: ``cancel`` before it is due and it is not called."""

    __slots__ = ("when", "callback", "args", "cancelled")

    def __init__(self, when: float, callback: Callback, args: tuple[Any, ...]) -> None:
        self.when, self.callback, self.args = when, callback, args
        self.cancelled = False

    def cancel(self) -> None:
        """Not to be called; what it would have been called with is let go at once (a cancelled timer stays queued
        until its deadline: a dial's would hold the connection's objects for `DIAL_TIMEOUT` after it ended)."""
        self.cancelled = True
        self.callback, self.args = _nothing, ()


def _nothing() -> None:
    """A cancelled timer's callback."""


def _when(timer: Timer) -> float:
    return timer.when


class Poller:
    """An epoll of the front's descriptors, read by one reader callback of ``loop`` (see the module docstring)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop if loop is not None else asyncio.get_running_loop()
        self._fds: dict[int, _Entry] = {}
        self._queues: dict[float, collections.deque[Timer]] = {}
        self._armed: asyncio.TimerHandle | None = None
        self._armed_at = 0.0
        self.closed = False
        selector = getattr(self.loop, "_selector", None)  # asyncio's selector loops keep theirs there
        self._selector: FrontSelector | None = None
        if isinstance(selector, FrontSelector) and selector.raw is None:
            self._selector, selector.raw = selector, self
            self._epoll = selector.epoll  # the loop's own: its one epoll_wait per turn reads ours too
        else:
            self._epoll = select.epoll()
            self.loop.add_reader(self._epoll.fileno(), self._dispatch)

    @property
    def shared(self) -> bool:
        """Whether the front's descriptors are in the loop's own epoll (a `front_loop`), not in one of their own."""
        return self._selector is not None

    # The loop's API as the relay and the dial use it.

    def time(self) -> float:
        return self.loop.time()

    def call_soon(self, callback: Callback, *args: Any) -> asyncio.Handle:
        return self.loop.call_soon(callback, *args)

    def call_soon_threadsafe(self, callback: Callback, *args: Any) -> asyncio.Handle:
        return self.loop.call_soon_threadsafe(callback, *args)

    def add_reader(self, fd: int, callback: Callback, *args: Any) -> None:
        entry = self._entry(fd)
        entry.reader, entry.reader_args = callback, args
        self._sync(fd, entry)

    def add_writer(self, fd: int, callback: Callback, *args: Any) -> None:
        entry = self._entry(fd)
        entry.writer, entry.writer_args = callback, args
        self._sync(fd, entry)

    def remove_reader(self, fd: int) -> bool:
        entry = self._fds.get(fd)
        if entry is None or entry.reader is None:
            return False
        entry.reader, entry.reader_args = None, ()
        self._sync(fd, entry)
        return True

    def remove_writer(self, fd: int, later: bool = False) -> bool:
        """``later``: forget the callback now (it is not called again) but leave the kernel's registration until
        the next change of ``fd`` or `settle`: a dial's writer that the relay's reader replaces at once is then
        one ``epoll_ctl(MOD)``, not a ``DEL`` and an ``ADD``. Whoever says ``later`` calls `settle` before the
        descriptor may be closed or left alone."""
        entry = self._fds.get(fd)
        if entry is None or entry.writer is None:
            return False
        entry.writer, entry.writer_args = None, ()
        if not later:
            self._sync(fd, entry)
        return True

    def forget(self, fd: int) -> None:
        """Stop watching ``fd`` at all (before it is closed, or given to the loop's own callbacks)."""
        entry = self._fds.get(fd)
        if entry is not None:
            entry.reader = entry.writer = None
            entry.reader_args = entry.writer_args = ()
            self._sync(fd, entry)

    def settle(self, fd: int) -> None:
        """Bring the kernel's registration of ``fd`` to its callbacks (after ``remove_writer(later=True)``)."""
        entry = self._fds.get(fd)
        if entry is not None:
            self._sync(fd, entry)

    def call_later(self, delay: float, callback: Callback, *args: Any) -> Timer:
        """Call ``callback(*args)`` ``delay`` seconds from now, unless the timer returned is cancelled first."""
        timer = Timer(self.loop.time() + delay, callback, args)
        queue = self._queues.get(delay)
        if queue is None:
            queue = self._queues[delay] = collections.deque()
        while queue and queue[0].cancelled:  # dials end in about the order they began: the queue stays short, and
            queue.popleft()  # a cancelled timer dies young instead of outliving the collector's young generations
        queue.append(timer)
        if self._armed is None or timer.when < self._armed_at:
            self._arm(timer.when)
        return timer

    def close(self) -> None:
        """Stop reading the epoll and close it (the descriptors in it are their owners' to close); idempotent."""
        if self.closed:
            return
        if self._armed is not None:
            self._armed.cancel()
            self._armed = None
        if self._selector is not None:  # the loop's epoll: take ours out of it, the loop goes on with it
            for fd in list(self._fds):
                with contextlib.suppress(OSError, ValueError):
                    self._epoll.unregister(fd)
            self._selector.raw = None
        else:
            self.loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
        self.closed = True
        self._fds.clear()
        self._queues.clear()

    # Inside.

    def _entry(self, fd: int) -> _Entry:
        entry = self._fds.get(fd)
        if entry is None:
            entry = self._fds[fd] = _Entry()
        return entry

    def _sync(self, fd: int, entry: _Entry) -> None:
        """Tell the kernel the events ``fd``'s callbacks wait for (one ``epoll_ctl``), forgetting it at none."""
        mask = (_IN if entry.reader is not None else 0) | (_OUT if entry.writer is not None else 0)
        if mask == entry.mask:
            return
        if self.closed:  # nothing is read any more: only forget
            entry.mask = mask
            if mask == 0:
                self._fds.pop(fd, None)
            return
        if mask == 0:
            del self._fds[fd]
            entry.mask = 0
            with contextlib.suppress(OSError):  # closed already (the kernel dropped it then)
                self._epoll.unregister(fd)
            return
        try:
            if entry.mask == 0:
                self._epoll.register(fd, mask)
            else:
                try:
                    self._epoll.modify(fd, mask)
                except FileNotFoundError:  # its socket was closed without a remove: the number is another's now
                    self._epoll.register(fd, mask)
        except BaseException:  # not watched: forget its callbacks with it (the caller closes what it serves)
            del self._fds[fd]
            raise
        entry.mask = mask

    def _dispatch(self) -> None:
        """The loop's callback on the epoll of our own: call each ready descriptor's callbacks."""
        try:
            ready = self._epoll.poll(0, MAX_EVENTS)
        except (OSError, ValueError):  # the epoll closed under us (`close`)
            return
        self.run(ready)

    def run(self, ready: list[tuple[int, int]]) -> None:
        """Call the callbacks of the ready descriptors ``ready`` (epoll's (descriptor, events)), the reader first."""
        fds = self._fds
        # The entries as they are now: one forgotten, and made anew for another socket that took its number, within
        # this wake-up is not called for an event that was its predecessor's (the old entry's callbacks are gone).
        for entry, event in [(fds.get(fd), event) for fd, event in ready]:
            if entry is None:
                continue
            if event & _READY_IN and entry.reader is not None:
                self._call(entry.reader, entry.reader_args)
            if event & _READY_OUT and entry.writer is not None:
                self._call(entry.writer, entry.writer_args)

    def _call(self, callback: Callback, args: tuple[Any, ...]) -> None:
        try:
            callback(*args)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:  # as asyncio's Handle does: reported, and the loop goes on
            self.loop.call_exception_handler(
                {"message": f"Exception in the front's callback {callback!r}", "exception": exc}
            )

    def _arm(self, when: float) -> None:
        if self._armed is not None:
            self._armed.cancel()
        self._armed_at = when
        self._armed = self.loop.call_at(when, self._expire)

    def _expire(self) -> None:
        """The loop's timer: call every timer that is due, then arm the loop's for the earliest left."""
        self._armed = None
        now = self.loop.time()
        due: list[Timer] = []
        for delay, queue in list(self._queues.items()):
            while queue and (queue[0].cancelled or queue[0].when <= now):
                timer = queue.popleft()
                if not timer.cancelled:
                    due.append(timer)
            if not queue:
                del self._queues[delay]
        due.sort(key=_when)  # in the order of their deadlines, whatever their delays
        for timer in due:
            if not timer.cancelled:  # a timer called before it may cancel it
                timer.cancelled = True
                self._call(timer.callback, timer.args)
        if self._queues:  # the earliest left (a callback's new timer may have armed the loop's already)
            earliest = min(queue[0].when for queue in self._queues.values())
            if self._armed is None or earliest < self._armed_at:
                self._arm(earliest)


class FrontSelector(selectors.EpollSelector):
    """asyncio's epoll selector, whose epoll also holds a `Poller`'s descriptors (``raw``): one ``epoll_wait`` per
    turn of the loop reads both, the poller's callbacks called from within `select` (on the loop's thread, before
    the turn's ready handles run), the selector's own keys returned to the loop as `selectors.EpollSelector` does."""

    raw: Poller | None = None

    def __init__(self) -> None:
        super().__init__()
        self.epoll: select.epoll = self._selector  # type: ignore[attr-defined]
        """The selector's epoll (`selectors.EpollSelector` keeps it as ``_selector``)."""
        self.keys: dict[int, selectors.SelectorKey] = self._fd_to_key  # type: ignore[attr-defined]
        """The selector's own registrations by descriptor (the same dict for its life)."""

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        """`selectors.EpollSelector.select`, with the poller's descriptors' events given to it."""
        if timeout is None:
            timeout = -1
        elif timeout <= 0:
            timeout = 0
        else:  # epoll_wait has a resolution of 1 ms: round away from zero to wait at least ``timeout``
            timeout = math.ceil(timeout * 1e3) * 1e-3
        raw = self.raw
        fd_to_key = self.keys
        max_ev = max(len(fd_to_key) + (len(raw._fds) if raw is not None else 0), 1)
        ready: list[tuple[selectors.SelectorKey, int]] = []
        try:
            fd_event_list = self.epoll.poll(timeout, max_ev)
        except InterruptedError:
            return ready
        theirs: list[tuple[int, int]] = []
        for fd, event in fd_event_list:
            key = fd_to_key.get(fd)
            if key is None:
                theirs.append((fd, event))
                continue
            events = 0
            if event & ~select.EPOLLIN:
                events |= selectors.EVENT_WRITE
            if event & ~select.EPOLLOUT:
                events |= selectors.EVENT_READ
            ready.append((key, events & key.events))
        if theirs and raw is not None:
            raw.run(theirs)
        return ready


def front_loop() -> asyncio.AbstractEventLoop:
    """An asyncio event loop (the default kind on Linux) whose selector is a `FrontSelector`: the front's `Poller`
    on it shares its epoll (the workers run on one: `egress.gateway.worker`)."""
    return asyncio.SelectorEventLoop(FrontSelector())
