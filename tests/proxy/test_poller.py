"""The front's epoll (egress.proxy.poller) on real sockets, in both its forms: sharing the loop's epoll (the workers'
`front_loop`) and an epoll of its own on a plain asyncio loop. Callbacks called with their arguments, not at all
once removed or once their descriptor is another socket's; the kernel's registration read back from
``/proc/self/fdinfo`` (one ``MOD`` for a dial's writer turned reader); an error in a callback reported while the
others run; timers in order, cancelled ones never called; a closed poller leaves the loop working."""

from __future__ import annotations

import asyncio
import os
import select
import socket
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from egress.proxy.poller import FrontSelector, Poller, front_loop
from tests.waiting import scaled

FORMS = [pytest.param(True, id="shared"), pytest.param(False, id="own-epoll")]


def _run(shared: bool, scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario(), loop_factory=front_loop if shared else None)  # type: ignore[arg-type]


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def _registered(poller: Poller) -> dict[int, int]:
    """The kernel's registrations in ``poller``'s epoll: descriptor -> events (``/proc/self/fdinfo``), the loop's
    own left out where they share it."""
    theirs = poller.loop._selector._fd_to_key if poller.shared else {}  # type: ignore[attr-defined]
    found: dict[int, int] = {}
    with open(f"/proc/self/fdinfo/{poller._epoll.fileno()}") as info:
        for line in info:
            if line.startswith("tfd:") and int(line.split()[1]) not in theirs:
                fields = line.split()
                found[int(fields[1])] = int(fields[3], 16) & (select.EPOLLIN | select.EPOLLOUT)  # (ERR, HUP always)
    return found


def _set(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


async def _until(done: asyncio.Future[Any]) -> Any:
    return await asyncio.wait_for(done, scaled(10))


@pytest.mark.parametrize("shared", FORMS)
def test_a_ready_socket_calls_its_reader_and_writer_with_their_arguments(shared: bool) -> None:
    async def scenario() -> None:
        poller = Poller()
        assert poller.shared is shared
        a, b = _pair()
        read: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
        wrote: asyncio.Future[tuple[str, int]] = asyncio.get_running_loop().create_future()
        poller.add_reader(a.fileno(), lambda *args: _set(read, args), "read", 1)
        poller.add_writer(b.fileno(), lambda *args: _set(wrote, args), "write", 2)
        assert await _until(wrote) == ("write", 2)
        assert not read.done()  # nothing to read yet
        b.send(b"x")
        assert await _until(read) == ("read", 1)
        assert _registered(poller) == {a.fileno(): select.EPOLLIN, b.fileno(): select.EPOLLOUT}
        for fd in (a.fileno(), b.fileno()):
            poller.forget(fd)
        assert _registered(poller) == {}
        poller.close()
        a.close()
        b.close()

    _run(shared, scenario)


@pytest.mark.parametrize("shared", FORMS)
def test_a_callback_removed_within_a_wake_up_is_not_called(shared: bool) -> None:
    """Two sockets ready at once: whichever runs first removes the other's reader, which is then not called."""

    async def scenario() -> None:
        poller = Poller()
        pairs = [_pair(), _pair()]
        called: list[int] = []
        done = asyncio.get_running_loop().create_future()

        def on(index: int) -> None:
            called.append(index)
            poller.remove_reader(pairs[index][0].fileno())
            poller.remove_reader(pairs[1 - index][0].fileno())
            asyncio.get_running_loop().call_soon(lambda: _set(done, None))

        for index, (near, far) in enumerate(pairs):
            poller.add_reader(near.fileno(), on, index)
            far.send(b"x")
        await _until(done)
        await asyncio.sleep(0)
        assert len(called) == 1, called
        poller.close()
        for pair in pairs:
            for sock in pair:
                sock.close()

    _run(shared, scenario)


@pytest.mark.parametrize("shared", FORMS)
def test_an_event_of_a_closed_socket_is_not_given_to_the_socket_that_takes_its_number(shared: bool) -> None:
    """Within one wake-up: a callback closes a ready socket and a new one gets its descriptor's number and a
    reader; the closed one's event is not the new one's (it has nothing to read)."""

    async def scenario() -> None:
        poller = Poller()
        (a, a_far), (b, b_far) = _pair(), _pair()
        stale: list[int] = []
        news: list[socket.socket] = []
        done = asyncio.get_running_loop().create_future()

        def first(which: socket.socket, other: socket.socket) -> None:
            if news:
                return
            number = other.fileno()
            poller.forget(number)
            other.close()
            new, far = _pair()
            news.extend((new, far))
            if new.fileno() != number:  # the kernel gives the lowest free number: the closed one's, but say so
                raise AssertionError(f"{new.fileno()} is not {number}")
            poller.add_reader(new.fileno(), stale.append, new.fileno())
            asyncio.get_running_loop().call_soon(lambda: _set(done, None))

        poller.add_reader(a.fileno(), first, a, b)
        poller.add_reader(b.fileno(), first, b, a)
        a_far.send(b"x")
        b_far.send(b"x")
        await _until(done)
        for _ in range(3):
            await asyncio.sleep(0)
        assert stale == []  # the new socket has nothing to read
        news[1].send(b"y")
        await asyncio.wait_for(_wait_for(lambda: bool(stale)), scaled(10))
        poller.close()
        for sock in (a, a_far, b, b_far, *news):
            sock.close()

    _run(shared, scenario)


async def _wait_for(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.001)


@pytest.mark.parametrize("shared", FORMS)
def test_a_writer_dropped_later_and_replaced_by_a_reader_is_one_change(shared: bool) -> None:
    async def scenario() -> None:
        poller = Poller()
        a, b = _pair()
        fd = a.fileno()
        poller.add_writer(fd, lambda: None)
        assert poller.remove_writer(fd, later=True)
        assert _registered(poller) == {fd: select.EPOLLOUT}  # the kernel's registration stays...
        poller.add_reader(fd, lambda: None)
        assert _registered(poller) == {fd: select.EPOLLIN}  # ...and becomes the reader's in one change
        poller.settle(fd)
        assert _registered(poller) == {fd: select.EPOLLIN}
        poller.add_writer(b.fileno(), lambda: None)
        poller.remove_writer(b.fileno(), later=True)
        poller.settle(b.fileno())  # nothing replaced it: settled, it is gone
        assert _registered(poller) == {fd: select.EPOLLIN}
        poller.close()
        a.close()
        b.close()

    _run(shared, scenario)


@pytest.mark.parametrize("shared", FORMS)
def test_an_error_in_a_callback_is_reported_and_the_others_run(shared: bool) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        poller = Poller()
        (a, a_far), (b, b_far) = _pair(), _pair()
        later: asyncio.Future[None] = loop.create_future()

        def broken() -> None:
            poller.remove_reader(a.fileno())
            raise RuntimeError("a bug")

        poller.add_reader(a.fileno(), broken)
        poller.add_reader(b.fileno(), lambda: _set(later, None))
        a_far.send(b"x")
        b_far.send(b"x")
        await _until(later)
        await asyncio.wait_for(_wait_for(lambda: bool(reported)), scaled(10))
        assert isinstance(reported[0]["exception"], RuntimeError)
        poller.close()
        for sock in (a, a_far, b, b_far):
            sock.close()

    _run(shared, scenario)


@pytest.mark.parametrize("shared", FORMS)
def test_timers_come_in_order_and_a_cancelled_one_never(shared: bool) -> None:
    """In the order of their deadlines (however late the loop is), whatever their delays; one a timer makes is
    called too."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        poller = Poller()
        fired: list[str] = []
        started = loop.time()
        cancelled = poller.call_later(0.02, fired.append, "cancelled")
        poller.call_later(0.05, fired.append, "c")
        poller.call_later(0.02, fired.append, "b")
        poller.call_later(0.01, fired.append, "a")
        poller.call_later(0.03, lambda: poller.call_later(0.001, fired.append, "from a timer"))
        cancelled.cancel()
        await asyncio.wait_for(_wait_for(lambda: len(fired) >= 4), scaled(10))
        assert loop.time() - started >= 0.05 - 0.002  # not before its time (the loop's clock)
        assert [name for name in fired if name != "from a timer"] == ["a", "b", "c"]
        assert sorted(fired) == ["a", "b", "c", "from a timer"]
        poller.close()

    _run(shared, scenario)


def test_a_cancelled_timer_lets_go_of_its_callback_and_arguments() -> None:
    """A cancelled timer stays queued until its deadline; what it would have been called with is freed at once."""

    class Held:
        def __call__(self, *args: object) -> None:
            raise AssertionError("a cancelled timer was called")

    async def scenario() -> None:
        poller = Poller()
        callback, argument = Held(), Held()
        held = weakref.ref(callback), weakref.ref(argument)
        timer = poller.call_later(60.0, callback, argument)
        del callback, argument
        assert all(ref() is not None for ref in held)  # kept while the timer may still be called
        timer.cancel()
        assert [ref() for ref in held] == [None, None]
        poller.close()

    _run(True, scenario)


def test_cancelled_timers_at_the_head_of_their_queue_are_dropped_by_the_next_of_their_delay() -> None:
    """Dials end in about the order they began: their cancelled timers go with the next dial's, not at their
    deadline (else each outlives the collector's young generations); one behind a live timer waits for it."""

    async def scenario() -> None:
        poller = Poller()
        fired: list[str] = []

        def queued() -> list[str]:
            return [timer.args[0] if timer.args else "cancelled" for timer in poller._queues[60.0]]

        poller.call_later(60.0, fired.append, "first").cancel()
        live = poller.call_later(60.0, fired.append, "live")
        assert queued() == ["live"]
        poller.call_later(60.0, fired.append, "behind").cancel()
        poller.call_later(60.0, fired.append, "last")
        assert queued() == ["live", "cancelled", "last"]  # dropped once the queue's head reaches it
        live.cancel()
        poller.call_later(60.0, fired.append, "after")
        assert queued() == ["last", "after"]
        assert fired == []
        poller.close()

    _run(True, scenario)


def test_a_closed_shared_poller_takes_its_sockets_out_of_the_loops_epoll_and_the_loop_goes_on() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        selector = loop._selector  # type: ignore[attr-defined]
        assert isinstance(selector, FrontSelector)
        poller = Poller()
        a, b = _pair()
        poller.add_reader(a.fileno(), lambda: None)
        b.send(b"ready, never read")
        poller.close()
        assert selector.raw is None
        assert a.fileno() not in _fds(selector.epoll.fileno())
        second = Poller()  # the loop's epoll is free for the next
        assert second.shared
        await asyncio.sleep(0.01)  # the loop turns (a socket left registered would be ready at each turn)
        second.close()
        a.close()
        b.close()

    asyncio.run(scenario(), loop_factory=front_loop)


def _fds(epoll_fd: int) -> set[int]:
    with open(f"/proc/self/fdinfo/{epoll_fd}") as info:
        return {int(line.split()[1]) for line in info if line.startswith("tfd:")}


def test_a_second_poller_on_a_front_loop_has_an_epoll_of_its_own() -> None:
    async def scenario() -> None:
        first, second = Poller(), Poller()
        assert first.shared and not second.shared
        assert os.path.exists(f"/proc/self/fd/{second._epoll.fileno()}")
        second.close()
        first.close()

    asyncio.run(scenario(), loop_factory=front_loop)
