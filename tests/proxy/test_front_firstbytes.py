"""The front's wait for first bytes that were not there at the accept (`egress.proxy.front._FirstBytes`): in the
poller's callbacks, no task, for a ClientHello it passes through; everything else served by the task as before;
the idle bound's close ends the wait and the connection.

On loopback with real sockets and the real gate, on the workers' loop, as tests/proxy/test_front.py."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Coroutine

import pytest

from egress.decide import Enforcement
from egress.proxy import front as front_module
from egress.proxy.front import Front
from egress.proxy.idle import IdleBound
from tests.proxy.test_front import _client_hello, _echo, _run, _serving, _Setup
from tests.waiting import eventually_async, scaled


@pytest.fixture(autouse=True)
def patient_peek(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in tests/proxy/test_front.py: a loaded machine must not hand a connection off for the wrong reason."""
    monkeypatch.setattr(front_module, "PEEK_WAIT", scaled(60))


def _counting_tasks(front: Front) -> list[str]:
    """The names of the coroutines ``front`` makes tasks of, from now on."""
    made: list[str] = []
    task = front._task

    def counted(work: Coroutine[None, None, None]) -> asyncio.Task[None]:
        made.append(work.__qualname__)
        return task(work)

    front._task = counted  # type: ignore[method-assign]
    return made


async def _accepted_and_waiting(front: Front, count: int = 1) -> None:
    async def waiting() -> bool:
        assert front.idle.total == count, "the front has not accepted it yet"
        return True

    await eventually_async(waiting, timeout=10)


async def _recv_all(client: socket.socket, size: int) -> bytes:
    got = b""
    while len(got) < size:
        chunk = await asyncio.to_thread(client.recv, 65536)
        if not chunk:
            break
        got += chunk
    return got


def test_a_hello_that_comes_after_the_accept_is_passed_through_without_a_task() -> None:
    async def scenario() -> None:
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        setup = _Setup(int(server.sockets[0].getsockname()[1]))
        port, task = await _serving(setup)
        made = _counting_tasks(setup.front)
        hello = _client_hello("allowed.test")
        client = socket.create_connection(("127.0.0.1", port))
        client.settimeout(scaled(10))
        await _accepted_and_waiting(setup.front)
        assert made == []  # waiting in the poller
        client.sendall(hello + b"more")
        assert await _recv_all(client, len(hello) + 4) == hello + b"more"
        client.close()
        assert made == []  # decided, dialled and relayed in callbacks
        assert (setup.front.relayed, setup.front.handed_off, setup.handed) == (1, 0, [])
        assert setup.front.idle.total == 0  # it spoke: out of the idle bound
        [allowed] = setup.reporter.reported
        assert (allowed.verdict.action, allowed.host) == (Enforcement.ALLOW, "allowed.test")
        task.cancel()
        server.close()

    _run(scenario)


@pytest.mark.parametrize("relayed", [False, True], ids=["tls-to-a-name-not-allowed", "half-a-hello-then-the-rest"])
def test_late_first_bytes_it_does_not_pass_at_once_go_to_the_task_as_before(relayed: bool) -> None:
    """A hello the gate does not pass through goes to the task, which refuses it (it names a host no rule allows);
    half a hello is waited for by the task, which then relays it: what the task did for every late client before."""

    async def scenario() -> None:
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        setup = _Setup(int(server.sockets[0].getsockname()[1]))
        port, task = await _serving(setup)
        made = _counting_tasks(setup.front)
        hello = _client_hello("allowed.test" if relayed else "evil.test")
        client = socket.create_connection(("127.0.0.1", port))
        client.settimeout(scaled(10))
        await _accepted_and_waiting(setup.front)
        if relayed:
            client.sendall(hello[:40])

            async def in_the_task() -> bool:
                assert made == ["Front._serve_one"]
                return True

            await eventually_async(in_the_task, timeout=10)
            client.sendall(hello[40:])
            assert await _recv_all(client, len(hello)) == hello
            client.close()
            assert (setup.front.relayed, setup.front.handed_off, setup.handed) == (1, 0, [])
        else:
            client.sendall(hello)
            client.shutdown(socket.SHUT_WR)
            assert await _recv_all(client, 1) == b"", "closed, nothing answered"
            client.close()
            assert made[0] == "Front._serve_one"
            # refused on its first bytes before the handoff (egress.proxy.firstlook), recorded, not handed off
            assert (setup.front.relayed, setup.front.handed_off, setup.front.refused, setup.handed) == (0, 0, 1, [])
            [blocked] = setup.reporter.reported
            assert (blocked.verdict.action, blocked.host) == (Enforcement.BLOCK, "evil.test")
        assert setup.front.idle.total == 0
        task.cancel()
        server.close()

    _run(scenario)


def test_the_idle_bound_closing_a_waiting_connection_ends_its_wait_and_closes_it() -> None:
    async def scenario() -> None:
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        setup = _Setup(int(server.sockets[0].getsockname()[1]))
        front = setup.front = Front(
            setup.gate, setup.reporter, setup._handoff, destination=setup.front.destination, idle=IdleBound(10, 1)
        )
        port, task = await _serving(setup)
        made = _counting_tasks(front)
        accepted: list[socket.socket] = []  # held here: only a close, not the collector, ends the first
        take = front._accepted

        def keep(conn: socket.socket, peer: tuple[str, int]) -> None:
            accepted.append(conn)
            take(conn, peer)

        front._accepted = keep  # type: ignore[method-assign]
        first = socket.create_connection(("127.0.0.1", port))
        first.settimeout(scaled(10))
        await _accepted_and_waiting(front)
        watched = set(front.poller._fds)  # the listener and the first connection
        second = socket.create_connection(("127.0.0.1", port))  # over the sandbox's share: the first is closed
        second.settimeout(scaled(10))

        async def closed() -> bool:
            assert front.idle.closed == {"box": 1}
            return True

        await eventually_async(closed, timeout=10)
        assert await asyncio.to_thread(first.recv, 10) == b""  # closed by the front, nothing read
        assert accepted[0].fileno() == -1
        assert len(front.poller._fds) == len(watched)  # the first's wait is gone, the second's is there
        hello = _client_hello("allowed.test")
        second.sendall(hello)
        assert await _recv_all(second, len(hello)) == hello
        for client in (first, second):
            client.close()
        assert made == []
        assert (front.relayed, front.handed_off, setup.handed) == (1, 0, [])
        task.cancel()
        server.close()

    _run(scenario)
