"""The proxy worker's lifetime (`egress.proxy.mitm.server.run_worker`): a worker that cannot listen ends with the
error and leaves no listener of its own behind. Its handoff to mitmproxy: a client that resets after the front's
last look is still read and recorded (red team 15)."""

from __future__ import annotations

import asyncio
import errno
import pathlib
import socket
import struct
import time
from unittest import mock

import pytest

from egress.decide import Reason
from egress.flowlog import Meter
from egress.proxy.mitm import server
from tests.ports import ports_listening_here
from tests.proxy.mitm.worker import Worker, running_worker
from tests.waiting import eventually, eventually_async, scaled

STRATUM = (
    b'{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1"]}\n'
    b'{"id":2,"method":"mining.authorize","params":["rt15.worker","x"]}\n'
)


def _reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def _gone(conn: socket.socket) -> bool:
    """Whether ``conn``'s client reset it (the socket no longer names its peer)."""
    try:
        conn.getpeername()
    except OSError:
        return True
    raise AssertionError("the reset has not arrived yet")


def test_a_worker_whose_port_is_taken_ends_with_the_error_and_leaves_no_listener(tmp_path: pathlib.Path) -> None:
    """CI, stop 32: the worker's sink (where refused connections are held) stayed listening after its front failed
    to bind, and took connections meant for the front."""
    worker = Worker(tmp_path)
    worker.ports = {"plain": 80}  # the policy's allowed port; nothing is served
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        before = ports_listening_here()

        async def run() -> None:
            await asyncio.wait_for(
                server.run_worker(
                    worker.gate(),
                    worker.reported,
                    port,
                    str(worker.confdir),
                    host="127.0.0.1",
                    destination=lambda _sock: ("127.0.0.1", 80),
                ),
                60,
            )

        with pytest.raises(OSError) as failed:
            asyncio.run(run())
        assert failed.value.errno == errno.EADDRINUSE
        assert ports_listening_here() == before


async def _read_all(reader: asyncio.StreamReader) -> bytes:
    got = b""
    while chunk := await reader.read(65536):
        got += chunk
    return got


def test_a_reset_after_mitmproxys_streams_are_made_ends_the_stream_after_its_bytes() -> None:
    """Red team 15: asyncio's reader raises a connection's error before the bytes it holds, so a client that sent
    its attempt and reset before mitmproxy's first read (a few turns of the loop after the handoff) left nothing
    to read: no flow, no record. The reset now ends the stream as a FIN does, after the bytes."""

    async def run() -> bytes:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            client = socket.create_connection(listener.getsockname())
            conn, _ = listener.accept()
        reader, writer = await server._metered_streams(conn, Meter(time.time()))
        client.sendall(STRATUM)
        _reset(client)

        async def lost() -> bool:
            assert writer.transport.is_closing(), "the reset has not been read yet"
            return True

        await eventually_async(lost, timeout=scaled(5))  # the transport read the bytes and the reset: no read yet
        try:
            return await _read_all(reader)
        finally:
            writer.close()

    assert asyncio.run(run()) == STRATUM


def test_a_client_reset_before_the_streams_are_made_keeps_the_peer_the_front_accepted() -> None:
    """The reset may land between the front's last look and the transport's making (a step of the loop): the
    socket no longer names its peer, and the handoff, which keyed the connection by it, failed on None. The peer
    the front accepted is the writer's peer name then, and the bytes are read."""

    async def run() -> tuple[object, bytes]:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            client = socket.create_connection(listener.getsockname())
            conn, peer = listener.accept()
        client.sendall(STRATUM)
        _reset(client)
        eventually(lambda: _gone(conn), timeout=scaled(5))
        reader, writer = await server._metered_streams(conn, Meter(time.time()), None, peer)
        try:
            return writer.get_extra_info("peername"), await _read_all(reader)
        finally:
            writer.close()

    with socket.create_server(("127.0.0.1", 0)) as probe:  # the loopback address the peer will have
        host = probe.getsockname()[0]
    named, read = asyncio.run(run())
    assert isinstance(named, tuple) and named[0] == host
    assert read == STRATUM


def test_an_attempt_reset_after_the_fronts_last_look_is_recorded(tmp_path: pathlib.Path) -> None:
    """The whole worker: Stratum in one write to the site's plain port, then a reset, with the front's last look
    told the client is still there (as when the reset lands just after it): mitmproxy reads the bytes and the
    attempt is recorded `mining`; nothing reaches the site."""
    with (
        mock.patch("egress.proxy.front.reset_before_served", return_value=False),
        running_worker(tmp_path) as worker,
    ):
        worker.to("plain")
        client = socket.create_connection(("127.0.0.1", worker.port), timeout=scaled(10))
        sport = int(client.getsockname()[1])
        client.sendall(STRATUM)
        _reset(client)

        def recorded() -> bool:
            blocks = worker.reported.blocks(sport)
            assert blocks, "nothing recorded"
            return True

        eventually(recorded, timeout=10)
        assert [b.verdict.reason for b in worker.reported.blocks(sport)] == [Reason.MINING]
        assert b"mining" not in worker.site.received()
