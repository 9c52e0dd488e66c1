"""`egress.proxy.mitm.linger`: a server connection resets when its process dies, or when egress severs it; a graceful
close (mitmproxy's ``writer.close()``, after a half-close too) still delivers everything it was given.

Real loopback sockets: a peer that does not read until the connection is ended, so most of a 4 MiB write is still
in asyncio's buffer and the kernel's when it ends; ground truth is what the peer reads and how its read ends."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import types
from collections.abc import Awaitable, Callable
from typing import Any
from unittest import mock

import h2.config
import h2.connection
import h2.events
import pytest
from mitmproxy import connection
from mitmproxy.proxy import server as mitm_server
from mitmproxy.proxy.server import ConnectionIO
from mitmproxy.proxy.server_hooks import ServerConnectionHookData

from egress.decide import Reason
from egress.decisions import DecidedFlow
from egress.proxy.mitm import linger
from tests.proxy.mitm.worker import Worker, read_all, read_response
from tests.waiting import eventually, eventually_async, scaled

SIZE = 4 * 1024 * 1024
PEER_RCVBUF = 64 * 1024


def _linger_of(writer: asyncio.StreamWriter) -> bytes:
    return bytes(writer.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8))


def _listener() -> socket.socket:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, PEER_RCVBUF)  # inherited: the window closes soon
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    return listener


def _read_to_end(peer: socket.socket) -> tuple[int, str]:
    """Bytes the peer reads, and how its read ended: ``eof`` (an orderly end) or ``reset``."""
    got = 0
    peer.settimeout(scaled(30))
    try:
        while chunk := peer.recv(65536):
            got += len(chunk)
    except ConnectionResetError:
        return got, "reset"
    finally:
        peer.close()
    return got, "eof"


async def _stalled(armed: bool) -> tuple[asyncio.StreamWriter, socket.socket]:
    """A connection (armed or not) whose peer has not read yet, SIZE bytes written to it."""
    with _listener() as listener:
        _, writer = await asyncio.open_connection(*listener.getsockname()[:2])
        peer, _ = listener.accept()
    if armed:
        assert linger.arm(writer)
    writer.write(b"u" * SIZE)
    assert writer.transport.get_write_buffer_size() > 0  # the kernel took what it could; asyncio holds the rest
    return writer, peer


def _run(ending: Callable[[asyncio.StreamWriter], None]) -> tuple[int, str]:
    async def scenario() -> tuple[int, str]:
        writer, peer = await _stalled(armed=True)
        assert _linger_of(writer) == linger.ABORT
        ending(writer)
        return await asyncio.to_thread(_read_to_end, peer)

    return asyncio.run(scenario())


def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()


def _half_close_then_close(writer: asyncio.StreamWriter) -> None:
    writer.write_eof()
    writer.close()


@pytest.mark.parametrize("ending", [_close, _half_close_then_close], ids=["close", "half-close-then-close"])
def test_a_graceful_close_of_an_armed_connection_delivers_everything(
    ending: Callable[[asyncio.StreamWriter], None],
) -> None:
    """mitmproxy's own end of a connection: what it wrote before arrives whole, then an orderly end (the linger is
    taken off just before the socket closes, once asyncio's buffer is written out)."""
    assert _run(ending) == (SIZE, "eof")


def test_a_severing_resets_even_after_a_graceful_close_began() -> None:
    """egress cuts a connection mitmproxy was closing (its buffer still being written out): nothing more goes."""

    def close_then_sever(writer: asyncio.StreamWriter) -> None:
        writer.close()
        linger.abort(writer)

    got, how = _run(close_then_sever)
    assert how == "reset" and got < SIZE, (got, how)


def test_a_severing_of_an_unarmed_stream_resets_too() -> None:
    """The client's side (not armed): `abort` sets the linger itself."""

    async def scenario() -> tuple[int, str]:
        writer, peer = await _stalled(armed=False)
        linger.abort(writer)
        return await asyncio.to_thread(_read_to_end, peer)

    got, how = asyncio.run(scenario())
    assert how == "reset" and got < SIZE, (got, how)


_DYING = """
import asyncio, sys
from egress.proxy.mitm import linger

async def main():
    _, writer = await asyncio.open_connection(sys.argv[1], int(sys.argv[2]))
    if sys.argv[3] == "armed":
        assert linger.arm(writer)
    writer.write(b"u" * int(sys.argv[4]))
    print("written", writer.transport.get_write_buffer_size(), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.parametrize("armed", [True, False], ids=["armed", "unarmed"])
def test_a_killed_process_resets_an_armed_connection(armed: bool) -> None:
    """A process killed with its connection's bytes in the kernel: armed, the peer gets a reset and the kernel's
    bytes are dropped; unarmed (what mitmproxy's server connections were), an orderly end after them."""
    with _listener() as listener:
        host, port = listener.getsockname()[:2]
        argv = [sys.executable, "-c", _DYING, host, str(port), "armed" if armed else "plain", str(SIZE)]
        child = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        try:
            peer, _ = listener.accept()
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line.startswith("written ") and int(line.split()[1]) > 0, line  # some waits in the kernel
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.kill()
            child.wait(scaled(30))
    got, how = _read_to_end(peer)
    assert how == ("reset" if armed else "eof"), (got, how)


def _hook_data() -> ServerConnectionHookData:
    client = connection.Client(peername=("127.0.0.1", 40000), sockname=("127.0.0.1", 8080))
    return ServerConnectionHookData(client=client, server=connection.Server(address=("127.0.0.1", 80)))


def _with_handler(
    check: Callable[[linger.Lingers, ServerConnectionHookData, asyncio.StreamWriter], Awaitable[None]],
) -> None:
    async def scenario() -> None:
        with _listener() as listener:
            _, writer = await asyncio.open_connection(*listener.getsockname()[:2])
            peer, _ = listener.accept()
        data = _hook_data()
        handler = types.SimpleNamespace(transports={data.server: ConnectionIO(writer=writer)})
        try:
            await check(linger.Lingers(lambda _client: handler), data, writer)  # type: ignore[arg-type,return-value]
        finally:
            writer.close()
            peer.close()

    asyncio.run(scenario())


def test_the_addon_arms_each_server_connection_as_it_connects() -> None:
    async def check(addon: linger.Lingers, data: ServerConnectionHookData, writer: asyncio.StreamWriter) -> None:
        assert _linger_of(writer) != linger.ABORT
        addon.server_connected(data)
        assert _linger_of(writer) == linger.ABORT

    _with_handler(check)


def test_a_server_connection_that_cannot_be_armed_is_closed() -> None:
    """Fail closed: a connection that would end gracefully on a death is not used."""

    async def check(addon: linger.Lingers, data: ServerConnectionHookData, writer: asyncio.StreamWriter) -> None:
        def refuse(*_args: object) -> None:
            raise OSError("setsockopt refused")

        sock = writer.get_extra_info("socket")
        original = type(sock).setsockopt
        try:
            type(sock).setsockopt = refuse
            addon.server_connected(data)
        finally:
            type(sock).setsockopt = original
        assert writer.transport.is_closing()

    _with_handler(check)


def test_a_client_gone_before_its_server_connected_is_left_alone() -> None:
    linger.Lingers(lambda _client: None).server_connected(_hook_data())


def _h2_get(worker: Worker) -> bool:
    with worker.connect(True, alpn=("h2",)) as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "GET"), (":path", "/"), (":scheme", "https"), (":authority", "allowed.lab")],
                          end_stream=True)  # fmt: skip
        sock.sendall(conn.data_to_send())
        while chunk := sock.recv(65536):
            events = conn.receive_data(chunk)
            sock.sendall(conn.data_to_send())
            if any(isinstance(event, h2.events.StreamEnded) for event in events):
                return True
    return False


def _http1_post(worker: Worker, tls: bool) -> bool:
    """A chunked POST: outside the front's plain-HTTP fast path (`egress.proxy.httpwire`), so mitmproxy carries it."""
    with worker.connect(tls) as sock:
        sock.sendall(
            b"POST /api HTTP/1.1\r\nHost: allowed.lab\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )
        return read_response(sock).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("kind", ["plain", "tls", "h2"], ids=["plain-http", "decrypted-http1", "decrypted-h2"])
def test_a_real_worker_arms_its_server_connection(worker: Worker, kind: str) -> None:
    """Whatever mitmproxy speaks to the site (plain HTTP, decrypted HTTP/1.1 or HTTP/2), its server connection is
    armed as it connects: the `Lingers` addon is installed and its hook runs on mitmproxy's real streams."""
    armed: list[bool] = []
    real = linger.arm

    def spy(writer: object) -> bool:
        armed.append(real(writer))
        return armed[-1]

    worker.to("plain" if kind == "plain" else "tls")
    with mock.patch.object(linger, "arm", spy):
        answered = _h2_get(worker) if kind == "h2" else _http1_post(worker, kind == "tls")
    assert answered and armed and all(armed), armed


JOB = (
    b'{"id":null,"method":"mining.notify","params":["rt16","00","01","02",[],"20000000","1d00ffff","5f5e1000",true]}\n'
)


def test_a_servers_answer_then_reset_is_read_before_the_end() -> None:
    """Red team 16: asyncio's reader raises a connection's error before the bytes it holds, so a pool that answered
    and reset before mitmproxy's next read had its answer dropped unread: judged by no detector, recorded nowhere.
    An armed server connection's reset now ends its stream after the bytes, as a FIN does."""

    async def scenario() -> bytes:
        with _listener() as listener:
            reader, writer = await asyncio.open_connection(*listener.getsockname()[:2])
            peer, _ = listener.accept()
        assert linger.arm(writer)
        peer.sendall(JOB)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger.ABORT)
        peer.close()

        async def lost() -> bool:
            assert writer.transport.is_closing(), "the reset has not been read yet"
            return True

        await eventually_async(lost, timeout=scaled(5))  # the transport read the answer and the reset: no read yet
        got = b""
        try:
            while chunk := await reader.read(65536):
                got += chunk
        finally:
            writer.close()
        return got

    assert asyncio.run(scenario()) == JOB


def _tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


TCP_CLOSE = 7


def test_a_servers_answer_still_unread_when_a_write_meets_its_reset_is_read() -> None:
    """Red team 16: a write that meets the server's reset closes asyncio's transport without reading what the
    kernel still holds (the transport stops reading at the write's error), so a pool's answer that arrived with
    its reset behind it, while mitmproxy was writing the client's bytes to it, was lost unjudged. It is read at
    the reset, before the stream's end."""

    async def scenario() -> bytes:
        with _listener() as listener:
            reader, writer = await asyncio.open_connection(*listener.getsockname()[:2])
            peer, _ = listener.accept()
        assert linger.arm(writer)
        transport = writer.transport
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()  # the loop is busy elsewhere: the answer waits in the kernel
        peer.sendall(JOB)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger.ABORT)
        peer.close()
        sock = socket.socket(fileno=os.dup(writer.get_extra_info("socket").fileno()))

        async def reset_in() -> bool:
            assert _tcp_state(sock) == TCP_CLOSE, "the reset has not arrived yet"
            return True

        with sock:
            await eventually_async(reset_in, timeout=scaled(5))
        writer.write(b"the client's next bytes")  # meets the reset: the transport closes
        got = b""
        try:
            while chunk := await reader.read(65536):
                got += chunk
        finally:
            writer.close()
        return got

    assert asyncio.run(scenario()) == JOB


def _pushes_and_resets(listener: socket.socket, connected: threading.Event) -> None:
    """The attacker's pool (a thread): pushes `JOB` to the one connection it accepts, then resets it, once the
    dialler has seen its connect complete (``connected``: else the dial itself fails with the reset, another path)."""
    peer, _ = listener.accept()
    connected.wait(scaled(10))
    with peer:
        peer.sendall(JOB)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger.ABORT)


def test_a_dial_the_server_reset_before_its_transport_was_made_is_judged(worker: Worker) -> None:
    """Red team 16 (``push-then-reset``): a pool that pushes its job as it accepts and resets, the reset landing
    after the connect completed but before asyncio made the transport, left the transport no peer name; mitmproxy's
    dial failed its ``assert peername`` and died, the client's handler waited for it forever, the job unread and
    nothing recorded. The worker's dial (`linger.open_connection`, given to mitmproxy's server module) names the
    peer by the address it dialled, and the job is read and judged: ``mining``, not delivered. The order is made
    here, not raced: the worker's loop makes the transport of this dial only once the pool's reset is in."""
    worker.reported.clear()
    worker.to("greeting")  # an allowed port: its dial goes to the pool instead (below)
    target = worker.target
    loop = worker.loop
    real = loop.create_connection
    with _listener() as listener:
        connected = threading.Event()
        pool = threading.Thread(target=_pushes_and_resets, args=(listener, connected), daemon=True)
        pool.start()

        async def reset_first(factory: Any, host: Any = None, port: Any = None, **kwargs: Any) -> Any:
            if (host, port) != target:
                return await real(factory, host, port, **kwargs)
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, listener.getsockname())
            connected.set()

            async def reset_in() -> bool:
                assert _tcp_state(sock) == TCP_CLOSE, "the pool's reset has not arrived yet"
                return True

            await eventually_async(reset_in, timeout=scaled(5))
            return await real(factory, sock=sock)

        with mock.patch.object(loop, "create_connection", reset_first), worker.connect(False) as client:
            sport = client.getsockname()[1]
            got = read_all(client)
        pool.join(scaled(10))
    assert b"mining.notify" not in got, got

    def recorded() -> DecidedFlow:
        blocks = worker.reported.blocks(sport)
        assert len(blocks) == 1, f"blocks of the connection: {blocks}"
        return blocks[0]

    block = eventually(recorded, timeout=10)
    assert block.verdict.reason is Reason.MINING, block


def test_the_worker_dials_through_egress() -> None:
    """`linger.install_dial` gives mitmproxy's server module egress's dial and leaves the rest of its asyncio."""
    linger.install_dial()
    linger.install_dial()  # idempotent
    shim = vars(mitm_server)["asyncio"]
    assert shim.open_connection is linger.open_connection
    assert shim.current_task is asyncio.current_task and shim.CancelledError is asyncio.CancelledError
