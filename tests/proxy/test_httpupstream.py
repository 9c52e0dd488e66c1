"""The fast path's server side (egress.proxy.httpupstream) on loopback: how its connection ends (gracefully, or
with a reset once cut or broken), that a cut one is never dialled or written again, and ``since``, the sweep's
measure of the server's progress. Ground truth is what the server's socket sees."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest

from egress.proxy.httpupstream import Closed, Upstream
from tests.waiting import eventually_async, scaled

GET = b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


Scenario = Callable[[Upstream, Clock, socket.socket], Awaitable[None]]


def run(scenario: Scenario) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(4)
            listener.setblocking(False)
            clock = Clock()
            upstream = Upstream(listener.getsockname(), clock)
            accepting = asyncio.ensure_future(loop.sock_accept(listener))
            assert await upstream.dial(loop) is False
            server, _ = await accepting
            with server:
                await asyncio.wait_for(scenario(upstream, clock, server), scaled(30))

    asyncio.run(main())


async def end_seen(server: socket.socket) -> str:
    """How the connection ended at the server: ``eof`` or ``reset``."""
    loop = asyncio.get_running_loop()
    try:
        while await loop.sock_recv(server, 65536):
            pass
    except ConnectionResetError:
        return "reset"
    return "eof"


def linger(upstream: Upstream) -> tuple[int, int]:
    assert upstream.sock is not None
    return struct.unpack("ii", upstream.sock.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8))


async def exchange(upstream: Upstream, server: socket.socket, answer: bytes = OK) -> bytes:
    loop = asyncio.get_running_loop()
    await upstream.send(loop, GET)
    assert await loop.sock_recv(server, 65536) == GET
    await loop.sock_sendall(server, answer)
    data, _, _ = await upstream.response("GET", lambda _: None)
    return data


def test_the_linger_is_zero_from_the_connect_and_taken_off_for_a_graceful_close() -> None:
    async def scenario(upstream: Upstream, clock: Clock, server: socket.socket) -> None:
        assert linger(upstream) == (1, 0)  # a worker that dies resets the connection
        assert await exchange(upstream, server) == OK
        upstream.close()
        assert await end_seen(server) == "eof"

    run(scenario)


def test_a_cut_connection_ends_with_a_reset_and_is_never_written_or_dialled_again() -> None:
    async def scenario(upstream: Upstream, clock: Clock, server: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        upstream.abort()
        with pytest.raises(Closed):
            await upstream.send(loop, GET)
        with pytest.raises(Closed):
            await upstream.dial(loop, again=True)
        upstream.close()
        assert await end_seen(server) == "reset"

    run(scenario)


def test_a_server_that_sends_more_than_its_response_gets_a_reset() -> None:
    async def scenario(upstream: Upstream, clock: Clock, server: socket.socket) -> None:
        with pytest.raises(Closed, match="more than its response"):
            await exchange(upstream, server, OK + b"HTTP/1.1 200 OK\r\n")
        upstream.close()
        assert await end_seen(server) == "reset"

    run(scenario)


def test_since_is_the_servers_last_progress_while_a_request_is_under_way() -> None:
    async def scenario(upstream: Upstream, clock: Clock, server: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        assert upstream.since is None
        await upstream.send(loop, GET)
        assert upstream.since == 50.0 and await loop.sock_recv(server, 65536) == GET
        answering = asyncio.ensure_future(upstream.response("GET", lambda _: None))
        clock.now = 60.0
        await loop.sock_sendall(server, OK[:10])  # a byte of the answer: progress

        async def progressed() -> bool:
            assert upstream.since == 60.0, upstream.since
            return True

        await eventually_async(progressed, timeout=10)
        await loop.sock_sendall(server, OK[10:])
        assert (await answering)[0] == OK
        assert upstream.since is None  # answered: the server owes nothing
        upstream.close()

    run(scenario)


def test_a_cut_wakes_a_wait_for_the_answer_without_sending_the_server_an_end() -> None:
    async def scenario(upstream: Upstream, clock: Clock, server: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        await upstream.send(loop, GET)
        answering = asyncio.ensure_future(upstream.response("GET", lambda _: None))
        upstream.abort()  # whether its task waits already or not
        with pytest.raises(Closed):
            await answering
        assert await loop.sock_recv(server, 65536) == GET
        upstream.close()
        assert await end_seen(server) == "reset"  # no end of stream before the reset

    run(scenario)
