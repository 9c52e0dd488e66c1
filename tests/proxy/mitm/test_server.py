"""The proxy worker's lifetime (`egress.proxy.mitm.server.run_worker`): a worker that cannot listen ends with the
error and leaves no listener of its own behind."""

from __future__ import annotations

import asyncio
import errno
import pathlib
import socket

import pytest

from egress.proxy.mitm import server
from tests.ports import ports_listening_here
from tests.proxy.mitm.worker import Worker


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
