"""egress/proxy/firstlook.py and its use by the front: first bytes the gate refuses (Stratum to a network rule's
address, a ClientHello naming a host no rule allows) are recorded and closed
in the front, nothing read by mitmproxy, the destination never dialled (issue 15, time-to-block); everything else
is handed off unread as before. On loopback with real sockets and the real gate, as tests/proxy/test_front.py.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest

from egress.decide import Enforcement, Reason
from egress.proxy import front as front_module
from egress.proxy.firstlook import refusal
from egress.proxy.front import Front
from tests.proxy.test_front import _client_hello, _hello_padded, _run, _serving, _Setup, allowed_gate
from tests.waiting import eventually_async, scaled

STRATUM = b'{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1"]}\n'


@pytest.fixture(autouse=True)
def patient_peek(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in tests/proxy/test_front.py: a loaded machine must not hand a connection off for the wrong reason."""
    monkeypatch.setattr(front_module, "PEEK_WAIT", scaled(60))


class _Counting:
    """The destination: counts the connections it accepts (a refused one must never be dialled)."""

    def __init__(self) -> None:
        self.accepted = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        writer.close()


async def _sent_and_closed(port: int, data: bytes) -> bytes:
    """Send ``data`` and read until the end (what the client gets back before the close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    writer.write_eof()  # a handoff (the old front) reads to the end and closes: the assertions then say what failed
    try:
        got = await asyncio.wait_for(reader.read(), scaled(10))
    except ConnectionResetError:
        got = b""
    writer.close()
    return got


@pytest.mark.parametrize(
    ("first_bytes", "network", "reason", "host"),
    [
        pytest.param(lambda: STRATUM, True, Reason.MINING, "", id="stratum-to-a-network-rule"),
        pytest.param(lambda: _client_hello("evil.test"), False, None, "evil.test", id="tls-not-allowed"),
    ],
)
def test_first_bytes_the_gate_refuses_are_recorded_and_closed_in_the_front(
    first_bytes: Callable[[], bytes], network: bool, reason: Reason | None, host: str
) -> None:
    async def scenario() -> None:
        destination = _Counting()
        setup = _Setup(await destination.start(), network)
        port, task = await _serving(setup)
        assert await _sent_and_closed(port, first_bytes()) == b"", "closed, nothing answered"
        [blocked] = setup.reporter.reported  # recorded before the close
        assert blocked.verdict.action is Enforcement.BLOCK and blocked.host == host
        if reason is not None:
            assert blocked.verdict.reason is reason
        assert blocked.decide_s is not None
        assert (setup.front.refused, setup.front.handed_off, setup.handed) == (1, 0, [])
        assert destination.accepted == 0, "never dialled"
        task.cancel()
        assert destination.server is not None
        destination.server.close()

    _run(scenario)


@pytest.mark.parametrize("path", ["report-mode", "gate-error", "destination-no-rule-allows", "hello-past-the-peek"])
def test_what_the_first_look_leaves_to_mitmproxy(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Report mode's would-block, an error while judging (mitmproxy judges again and fails closed), a destination
    no rule allows (mitmproxy's sink reads it), a ClientHello bigger than the peek: handed off unread, unreported."""
    sent = _hello_padded("evil.test", 17_000) if path == "hello-past-the-peek" else STRATUM

    async def scenario() -> None:
        destination = _Counting()
        upstream = await destination.start()
        setup = _Setup(upstream, network=True)
        if path == "report-mode":
            setup.gate = allowed_gate(upstream, network=True, mode="report")
        elif path == "destination-no-rule-allows":
            setup.gate = allowed_gate(upstream + 1 if upstream < 65535 else upstream - 1, network=True)
        elif path == "gate-error":

            def broken(*_: object, **__: object) -> None:
                raise RuntimeError("a detector's fault")

            monkeypatch.setattr(setup.gate, "on_first_bytes", broken)
        setup.front = Front(setup.gate, setup.reporter, setup._handoff, destination=lambda _: ("127.0.0.1", upstream))
        port, task = await _serving(setup)
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(sent)
        await writer.drain()
        writer.close()

        async def handed() -> bool:
            assert setup.handed == [sent], "handed off, nothing read by the front"
            return True

        await eventually_async(handed, timeout=10)
        assert (setup.front.refused, setup.front.handed_off, setup.reporter.reported) == (0, 1, [])
        task.cancel()
        assert destination.server is not None
        destination.server.close()

    _run(scenario)


def test_refusal_peeks_and_consumes_nothing() -> None:
    """`refusal` judges what it peeks: the bytes stay for whoever reads them next."""
    gate = allowed_gate(4444, network=True)
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    conn, peer = listener.accept()
    listener.close()
    client.sendall(STRATUM)

    async def arrived() -> bool:
        assert conn.recv(4096, socket.MSG_PEEK) == STRATUM
        return True

    asyncio.run(eventually_async(arrived, timeout=5))
    conn.setblocking(False)
    blocked = refusal(conn, peer, gate, lambda _: ("127.0.0.1", 4444))
    assert blocked is not None and blocked.verdict.reason is Reason.MINING
    assert (blocked.sandbox, blocked.dst, blocked.dport) == ("box", "127.0.0.1", 4444)
    assert conn.recv(4096, socket.MSG_PEEK) == STRATUM
    assert refusal(conn, ("192.0.2.9", 1), gate, lambda _: ("127.0.0.1", 4444)) is None, "no sandbox"
    for sock in (conn, client):
        sock.close()
