"""The front's relay on its sockets (egress.proxy.splice) over real loopback TCP: bytes both ways byte for byte,
with splice(2) only once the watch is finished; back-pressure, half-close, and both sides closed on a watch that
says no or an error on either side (fail closed)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import os
import socket
import struct
import sys
import termios
import weakref
from collections.abc import Awaitable, Callable

import pytest

from egress.detect.base import Finding
from egress.proxy.poller import Poller, front_loop
from egress.proxy.relay import Watch
from egress.proxy.splice import (
    BIG_PIPES,
    PIPE_SIZE,
    SANDBOX_CONGESTION,
    SMALL_PIPE_SIZE,
    Relay,
    _Direction,
    dial,
    sandbox_side,
)
from tests.waiting import eventually_async, scaled

HANDSHAKE_RECORD = b"\x16\x03\x01\x00\x05hello"
"""A TLS handshake record: the shape watcher keeps reading after it (it waits for application records)."""
_F_GETPIPE_SZ = 1032  # linux/fcntl.h


async def _pair() -> tuple[socket.socket, socket.socket]:
    """Two connected non-blocking loopback TCP sockets (the first dialled with `dial`)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        near = await dial(listener.getsockname())
        far, _ = await asyncio.get_running_loop().sock_accept(listener)
    far.setblocking(False)
    return near, far


class _Relayed:
    """A client, a server and the relay between them; ``lost`` counts the relay's ``on_lost`` calls."""

    def __init__(self, client: socket.socket, server: socket.socket, relay: Relay) -> None:
        self.client, self.server, self.relay = client, server, relay
        self.lost = 0

    def close(self) -> None:
        for sock in (self.client, self.server):
            sock.close()
        self.relay.close()


async def _relayed(watch: Watch | None, splice: bool = True) -> _Relayed:
    client, client_side = await _pair()
    upstream, server = await _pair()
    relay = Relay(client_side, upstream, watch, splice=splice, loop=Poller())
    relayed = _Relayed(client, server, relay)

    def lost() -> None:
        relayed.lost += 1

    relay.on_lost = lost
    relay.start()
    return relayed


def _watch(on_finding: Callable[[Finding], bool] = lambda _: False) -> Watch:
    return Watch(on_finding, suspicions=False)


async def _read_all(sock: socket.socket, until: int | None = None, reset_ends: bool = True) -> bytes:
    """What ``sock`` receives until its end of stream (or ``until`` bytes); a reset ends it too (a relay closed
    other than by both ends aborts its sides) unless not ``reset_ends``."""
    loop = asyncio.get_running_loop()
    got = bytearray()
    while until is None or len(got) < until:
        try:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), scaled(30))
        except ConnectionResetError:
            if not reset_ends:
                raise
            break
        if not chunk:
            break
        got += chunk
    return bytes(got)


def _run(scenario: Callable[[], Awaitable[None]]) -> None:
    """On the workers' loop (`front_loop`), where `_relayed`'s relay shares the loop's epoll as the front's do."""
    asyncio.run(scenario(), loop_factory=front_loop)  # type: ignore[arg-type]


@pytest.mark.parametrize("splice", [True, False], ids=["splice", "recv-send"])
def test_bytes_go_both_ways_byte_for_byte_with_half_close(splice: bool) -> None:
    """Not TLS records: the shape watcher is done at the first chunk, so (with splicing on) every later chunk is
    spliced. The client ends its side first; the server's answer still comes back; then the relay closes."""

    async def scenario() -> None:
        relayed = await _relayed(_watch(), splice)
        loop = asyncio.get_running_loop()
        up = b"not TLS, " + bytes(range(256)) * 8192  # 2 MiB
        down = bytes(range(255, -1, -1)) * 12288  # 3 MiB
        await loop.sock_sendall(relayed.client, up[:9])
        assert await _read_all(relayed.server, 9) == up[:9]
        assert (relayed.relay.up.pipe is not None) is splice, "the watch is finished: splice from now on"
        sending = asyncio.gather(loop.sock_sendall(relayed.client, up[9:]), loop.sock_sendall(relayed.server, down))
        got_up = await _read_all(relayed.server, len(up) - 9)
        got_down = await _read_all(relayed.client, len(down))
        await sending
        assert (got_up, got_down) == (up[9:], down)
        relayed.client.shutdown(socket.SHUT_WR)
        assert await _read_all(relayed.server) == b"", "the client's end reached the server"
        await loop.sock_sendall(relayed.server, b"answer after the client's end")
        assert await _read_all(relayed.client, 29) == b"answer after the client's end"
        relayed.server.shutdown(socket.SHUT_WR)
        assert await _read_all(relayed.client) == b""

        async def closed() -> bool:
            assert relayed.relay.closed and relayed.lost == 1
            return True

        await eventually_async(closed, timeout=scaled(10))
        assert (relayed.relay.up.moved, relayed.relay.down.moved) == (len(up), len(down) + 29)
        relayed.close()

    _run(scenario)


@pytest.mark.parametrize("in_use", [0, BIG_PIPES], ids=["big", "past-big-pipes"])
def test_a_splicing_direction_has_a_pipe_of_pipe_size(monkeypatch: pytest.MonkeyPatch, in_use: int) -> None:
    """Bigger pipes are fewer wake-ups per MiB, for `BIG_PIPES` directions at a time (the kernel's per-user pipe
    budget), `SMALL_PIPE_SIZE` past them; a closed relay gives its big pipes back."""
    monkeypatch.setattr(_Direction, "big_pipes", in_use)

    async def scenario() -> None:
        relayed = await _relayed(_watch())
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(relayed.client, b"not TLS")
        assert await _read_all(relayed.server, 7) == b"not TLS"
        pipe = relayed.relay.up.pipe
        assert pipe is not None
        with open("/proc/sys/fs/pipe-max-size") as cap:
            expected = min(PIPE_SIZE if in_use < BIG_PIPES else SMALL_PIPE_SIZE, int(cap.read()))
        assert fcntl.fcntl(pipe[1], _F_GETPIPE_SZ) == expected
        assert _Direction.big_pipes == (in_use + 1 if in_use < BIG_PIPES else in_use)
        relayed.close()
        assert _Direction.big_pipes == in_use

    _run(scenario)


@pytest.mark.parametrize("in_use", [0, BIG_PIPES], ids=["thread", "event-loop"])
def test_a_big_pipe_direction_is_moved_by_a_thread_that_the_close_stops(
    monkeypatch: pytest.MonkeyPatch, in_use: int
) -> None:
    """A direction with a `PIPE_SIZE` pipe is spliced by a thread of its own (the others by the event loop, as
    the parameter past `BIG_PIPES` shows): bytes both ways byte for byte, and closing the relay stops the thread
    before any descriptor is closed."""
    monkeypatch.setattr(_Direction, "big_pipes", in_use)

    async def scenario() -> None:
        relayed = await _relayed(_watch())
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(relayed.client, b"not TLS")
        assert await _read_all(relayed.server, 7) == b"not TLS"
        await loop.sock_sendall(relayed.server, b"an answer")
        assert await _read_all(relayed.client, 9) == b"an answer"
        threads = [direction.thread for direction in (relayed.relay.up, relayed.relay.down)]
        assert all((thread is not None and thread.is_alive()) is (in_use < BIG_PIPES) for thread in threads)
        up, down = bytes(range(256)) * 8192, bytes(range(255, -1, -1)) * 12288  # 2 MiB, 3 MiB
        sending = asyncio.gather(loop.sock_sendall(relayed.client, up), loop.sock_sendall(relayed.server, down))
        assert (await _read_all(relayed.server, len(up)), await _read_all(relayed.client, len(down))) == (up, down)
        await sending
        assert (relayed.relay.up.moved, relayed.relay.down.moved) == (7 + len(up), 9 + len(down))
        relayed.relay.close()
        assert not any(thread is not None and thread.is_alive() for thread in threads)
        assert relayed.relay.up.pipe is None and relayed.relay.down.pipe is None
        assert await _read_all(relayed.client) == b"" and await _read_all(relayed.server) == b""
        relayed.close()

    _run(scenario)


def test_a_reset_seen_by_a_directions_thread_closes_both_sides(monkeypatch: pytest.MonkeyPatch) -> None:
    """The thread hands its error to the event loop, which closes both sides (fail closed)."""
    monkeypatch.setattr(_Direction, "big_pipes", 0)  # relays other modules' tests left open hold none of ours

    async def scenario() -> None:
        relayed = await _relayed(_watch())
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(relayed.client, b"not TLS")
        assert await _read_all(relayed.server, 7) == b"not TLS"
        await loop.sock_sendall(relayed.server, b"an answer")
        assert await _read_all(relayed.client, 9) == b"an answer"
        assert relayed.relay.up.thread is not None and relayed.relay.down.thread is not None
        relayed.client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        relayed.client.close()  # RST, seen by the up direction's thread
        assert await _read_all(relayed.server) == b"", "the server's side was closed too"

        async def closed() -> bool:
            assert relayed.relay.closed and relayed.lost == 1
            return True

        await eventually_async(closed, timeout=scaled(10))
        relayed.server.close()

    _run(scenario)


def test_nothing_is_spliced_while_the_watch_reads() -> None:
    async def scenario() -> None:
        relayed = await _relayed(_watch())
        loop = asyncio.get_running_loop()
        for _ in range(3):
            await loop.sock_sendall(relayed.client, HANDSHAKE_RECORD)
            assert await _read_all(relayed.server, len(HANDSHAKE_RECORD)) == HANDSHAKE_RECORD
        assert relayed.relay.watch is not None and not relayed.relay.watch.finished
        assert relayed.relay.up.pipe is None and relayed.relay.down.pipe is None
        relayed.close()

    _run(scenario)


def test_a_destination_that_does_not_read_stops_the_source() -> None:
    """Back-pressure: the relay holds at most a chunk (in Python or in its pipe) and stops reading the client
    while the server takes nothing; once it reads, everything arrives."""

    async def scenario() -> None:
        relayed = await _relayed(_watch())
        loop = asyncio.get_running_loop()
        data = b"not TLS " + bytes(32 * 1024 * 1024)  # more than every socket buffer on the way
        sending = asyncio.ensure_future(loop.sock_sendall(relayed.client, data))

        async def held() -> bool:
            assert relayed.relay.up.writing and not relayed.relay.up.reading
            return True

        await eventually_async(held, timeout=scaled(30))
        assert not sending.done(), "the client could not send it all: the relay stopped reading"
        assert await _read_all(relayed.server, len(data)) == data
        await sending
        relayed.close()

    _run(scenario)


@pytest.mark.parametrize("splice", [True, False], ids=["splice", "recv-send"])
def test_a_cut_drops_what_the_destination_has_not_taken(splice: bool) -> None:
    """A relay closed under way (a policy that no longer allows it: `egress.proxy.openflows`) resets the
    destination's side: what its send buffer held is dropped, not sent on after the close (red team 7)."""

    async def scenario() -> None:
        relayed = await _relayed(_watch(), splice)
        loop = asyncio.get_running_loop()
        data = b"not TLS " + bytes(32 * 1024 * 1024)
        sending = asyncio.ensure_future(loop.sock_sendall(relayed.client, data))

        async def held() -> bool:  # the destination side's send buffer holds bytes: what the cut must drop
            queued = fcntl.ioctl(relayed.relay.down.src.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
            assert int.from_bytes(queued, sys.byteorder) > 0
            return True

        await eventually_async(held, timeout=scaled(30))
        relayed.relay.close()
        with contextlib.suppress(ConnectionResetError):
            got = await _read_all(relayed.server, reset_ends=False)
            pytest.fail(f"the destination read {len(got)} bytes and a clean end, no reset")
        sending.cancel()
        with contextlib.suppress(BaseException):
            await sending
        relayed.close()

    _run(scenario)


def test_the_destination_side_is_reset_whatever_closes_it() -> None:
    """The destination's socket has ``SO_LINGER`` zero from the start, so a worker that dies (the kernel closes
    its sockets) resets it too; a relay that ends gracefully (both directions ended) takes it off first."""

    async def scenario() -> None:
        relayed = await _relayed(_watch())
        linger = relayed.relay.down.src.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8)
        assert linger == b"\x01\x00\x00\x00\x00\x00\x00\x00"
        relayed.close()

    _run(scenario)


@pytest.mark.parametrize("splice", [True, False], ids=["splice", "recv-send"])
def test_a_reset_closes_both_sides(splice: bool) -> None:
    async def scenario() -> None:
        relayed = await _relayed(_watch(), splice)
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(relayed.client, b"not TLS")
        assert await _read_all(relayed.server, 7) == b"not TLS"
        relayed.server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        relayed.server.close()  # RST
        try:
            rest = await asyncio.wait_for(loop.sock_recv(relayed.client, 1024), scaled(30))
        except ConnectionResetError:
            rest = b""
        assert rest == b"", "the client's side was closed too"
        assert relayed.relay.closed and relayed.lost == 1
        relayed.client.close()

    _run(scenario)


def test_a_watch_that_says_no_closes_both_before_the_chunk_goes_on() -> None:
    class Refusing(Watch):
        def passes(self, from_client: bool, data: bytes) -> bool:
            return b"tunnel" not in data

    async def scenario() -> None:
        relayed = await _relayed(Refusing(lambda _: True))
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(relayed.client, HANDSHAKE_RECORD)
        assert await _read_all(relayed.server, len(HANDSHAKE_RECORD)) == HANDSHAKE_RECORD
        await loop.sock_sendall(relayed.server, b"the tunnel's answer")
        assert await _read_all(relayed.server) == b"", "closed: nothing more reached the server"
        assert await _read_all(relayed.client) == b"", "and the refused chunk never reached the client"
        assert relayed.relay.closed and relayed.lost == 1
        relayed.close()

    _run(scenario)


def test_an_error_in_a_watch_closes_both() -> None:
    """A watch that raises (its own errors it catches: this is a bug past it) fails closed, never open."""

    class Broken(Watch):
        def passes(self, from_client: bool, data: bytes) -> bool:
            raise RuntimeError("a bug")

    async def scenario() -> None:
        relayed = await _relayed(Broken(lambda _: False))
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(relayed.client, HANDSHAKE_RECORD)
        assert await _read_all(relayed.server) == b""
        assert await _read_all(relayed.client) == b""
        assert relayed.relay.closed and relayed.lost == 1
        relayed.close()

    _run(scenario)


def test_dial_raises_the_connects_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]  # bound, not listening: the connect is refused
        with pytest.raises(ConnectionRefusedError):
            asyncio.run(dial(("127.0.0.1", port), timeout=scaled(5)))


def test_dial_gives_up_after_its_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        address = listener.getsockname()
        held = []
        try:
            # Fill the accept queue: the kernel then drops further SYNs, and a connect waits for an answer.
            for _ in range(4):
                sock = socket.socket()
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    sock.connect(address)
                held.append(sock)
            with pytest.raises(TimeoutError):
                asyncio.run(dial(address, timeout=0.3))
        finally:
            for sock in held:
                sock.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="choosing a congestion control outside the allowed list needs root")
def test_the_sandbox_side_accepts_with_its_own_congestion_control() -> None:
    """The front's listeners, so the sandbox's connections, use `SANDBOX_CONGESTION`, whatever the host's
    default (this machine's may be BBR)."""
    with open("/proc/sys/net/ipv4/tcp_available_congestion_control") as available:
        if SANDBOX_CONGESTION.decode() not in available.read().split():
            pytest.skip("the kernel has no such congestion control")
    with socket.socket() as listener:
        sandbox_side(listener)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        with socket.create_connection(listener.getsockname()):
            accepted, _ = listener.accept()
            with accepted:
                chosen = accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, 16).rstrip(b"\0")
                assert chosen == SANDBOX_CONGESTION


def test_the_clients_first_bytes_go_on_within_start() -> None:
    """The front starts a relay once the client's ClientHello is there (it peeked it): `Relay.start` reads and
    sends it on at once, before the loop's next turn, and the rest is relayed as before."""

    async def scenario() -> None:
        client, client_side = await _pair()
        upstream, server = await _pair()
        client.sendall(HANDSHAKE_RECORD)

        async def there() -> bool:
            return client_side.recv(64, socket.MSG_PEEK) == HANDSHAKE_RECORD

        await eventually_async(there, timeout=scaled(10))
        relay = Relay(client_side, upstream, _watch())
        relay.start()
        assert relay.up.moved == len(HANDSHAKE_RECORD) and not relay.up.pending, "read and sent within start"
        relayed = _Relayed(client, server, relay)
        assert await _read_all(server, len(HANDSHAKE_RECORD)) == HANDSHAKE_RECORD
        await asyncio.get_running_loop().sock_sendall(client, b"\x17\x03\x03\x00\x02ok")
        assert await _read_all(server, 7) == b"\x17\x03\x03\x00\x02ok"
        relayed.close()

    _run(scenario)


@pytest.mark.parametrize("graceful", [True, False], ids=["graceful", "aborted"])
def test_a_closed_relay_leaves_each_side_the_linger_it_had_before_only_the_one_that_differs_set(
    monkeypatch: pytest.MonkeyPatch, graceful: bool
) -> None:
    """`Relay.close` sets the linger of one side only (the other has it already): the state each socket is closed
    in is what setting both gave (off when both directions ended, zero seconds for an abort), with one
    setsockopt."""
    from egress.proxy import splice as splice_module

    async def scenario() -> None:
        relayed = await _relayed(_watch())
        sides = [socket.socket(fileno=os.dup(sock.fileno())) for sock in (relayed.relay.up.src, relayed.relay.down.src)]
        set_on: list[int] = []
        linger = splice_module._linger

        def counted(sock: socket.socket, value: bytes) -> None:
            set_on.append(sock.fileno())
            linger(sock, value)

        monkeypatch.setattr(splice_module, "_linger", counted)
        relayed.relay.close(graceful=graceful)
        want = struct.pack("ii", 0 if graceful else 1, 0)
        assert [side.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8) for side in sides] == [want, want]
        assert len(set_on) == 1
        for sock in (*sides, relayed.client, relayed.server):
            sock.close()

    _run(scenario)


@pytest.mark.parametrize("graceful", [True, False], ids=["both-ended", "aborted"])
def test_a_closed_relays_objects_go_at_once_without_the_collector(graceful: bool) -> None:
    """The relay and its directions refer to each other: once it closed, the connection's objects (the relay, its
    watch) are freed by reference counting, not left for the collector's next pass."""

    async def scenario() -> None:
        relayed = await _relayed(_watch())
        relay = relayed.relay
        assert relay.watch is not None
        gone = weakref.ref(relay), weakref.ref(relay.watch)

        async def closed() -> bool:
            held = gone[0]()
            return held is None or held.closed

        if graceful:
            relayed.client.shutdown(socket.SHUT_WR)
            relayed.server.shutdown(socket.SHUT_WR)
            assert await eventually_async(closed, timeout=scaled(10))
        else:
            relay.close()
        relayed.client.close()
        relayed.server.close()
        del relayed, relay
        assert [ref() for ref in gone] == [None, None]

    enabled = gc.isenabled()
    gc.disable()
    try:
        _run(scenario)
    finally:
        if enabled:
            gc.enable()
