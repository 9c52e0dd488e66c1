"""The front's callback dial (egress.proxy.connect) over real loopback TCP: a connected socket with Nagle off, a
refused port's error, a destination that never answers timed out; each told once, from the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import weakref

from egress.proxy.connect import connect
from egress.proxy.poller import Poller
from tests.waiting import scaled


async def _dial(address: tuple[str, int], timeout: float) -> tuple[list[tuple[socket.socket | None, object]], bool]:
    """Dial ``address``; every call of the callback, and whether one came before `connect` returned."""
    told: list[tuple[socket.socket | None, object]] = []
    done = asyncio.Event()

    def then(sock: socket.socket | None, error: BaseException | None) -> None:
        told.append((sock, error))
        done.set()

    poller = Poller()
    connect(poller, address, timeout, then)
    early = bool(told)
    await asyncio.wait_for(done.wait(), scaled(10))
    await asyncio.sleep(0)  # a second call would come on the loop's next turns
    poller.close()
    return told, early


def test_a_listening_port_gives_a_connected_socket_without_nagle() -> None:
    async def main() -> None:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            told, early = await _dial(listener.getsockname(), scaled(10))
            assert not early and len(told) == 1
            sock, error = told[0]
            assert error is None and sock is not None
            with sock:
                assert sock.getpeername() == listener.getsockname()
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                assert not sock.getblocking()

    asyncio.run(main())


def test_a_refused_port_gives_its_error() -> None:
    async def main() -> None:
        with socket.socket() as closed:  # bound, never listening: the kernel refuses
            closed.bind(("127.0.0.1", 0))
            told, early = await _dial(closed.getsockname(), scaled(10))
        assert not early and len(told) == 1
        sock, error = told[0]
        assert sock is None and isinstance(error, ConnectionRefusedError)

    asyncio.run(main())


def test_a_destination_that_never_answers_times_out() -> None:
    async def main() -> None:
        with socket.socket() as listener, contextlib.ExitStack() as stack:
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)  # never accepted: once its queue is full, the kernel drops the SYNs that follow
            for _ in range(4):
                filler = stack.enter_context(socket.socket())
                filler.setblocking(False)
                filler.connect_ex(listener.getsockname())
            told, early = await _dial(listener.getsockname(), 0.3)
        assert not early and len(told) == 1
        sock, error = told[0]
        assert sock is None and isinstance(error, TimeoutError)

    asyncio.run(main())


def test_a_finished_dial_holds_nothing_of_its_callback() -> None:
    """The dial's timer stays queued until its deadline, cancelled: it must not keep ``then`` (and with it the
    connection it relays) alive that long; the front's dials held each connection's objects for `DIAL_TIMEOUT`."""

    class Then:
        def __init__(self, done: asyncio.Event) -> None:
            self.done = done

        def __call__(self, sock: socket.socket | None, error: BaseException | None) -> None:
            if sock is not None:
                sock.close()
            self.done.set()

    async def main() -> None:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            poller = Poller()
            done = asyncio.Event()
            then = Then(done)
            held = weakref.ref(then)
            connect(poller, listener.getsockname(), 60.0, then)
            del then
            await asyncio.wait_for(done.wait(), scaled(10))
            assert held() is None
            poller.close()

    asyncio.run(main())
