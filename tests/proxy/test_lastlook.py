"""egress/proxy/lastlook.py and its use by the front: a client that sends a whole attempt in one write and
resets at once is judged on the bytes the kernel kept, and recorded (red team 14: it went unrecorded, handed to
mitmproxy, which closed it unread). On loopback with real sockets and the real gate, as tests/proxy/test_front.py.
"""

from __future__ import annotations

import socket
import struct

import pytest

from egress.decide import Enforcement, Reason
from egress.proxy import front as front_module
from egress.proxy.lastlook import last_look, reset_before_served
from tests.proxy.test_front import _run, _serving, _Setup, allowed_gate
from tests.waiting import eventually, eventually_async, scaled

STRATUM = (
    b'{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1"]}\n'
    b'{"id":2,"method":"mining.authorize","params":["rt14.worker","x"]}\n'
)
PORT = 4444
"""The network rule's port (`allowed_gate`'s upstream): nothing listens; the gate judges, nothing is dialled."""


def _reset(conn: socket.socket) -> None:
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def _accepted_after(data: bytes, reset: bool) -> tuple[socket.socket, tuple[str, int], socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    conn, peer = listener.accept()
    listener.close()
    client.sendall(data)
    if reset:
        _reset(client)
    return conn, peer, client


def test_an_error_judging_a_reset_clients_bytes_is_a_recorded_block(monkeypatch: pytest.MonkeyPatch) -> None:
    gate = allowed_gate(PORT, network=True)
    conn, peer, client = _accepted_after(STRATUM, reset=True)

    def broken(*_: object, **__: object) -> None:
        raise RuntimeError("a detector's fault")

    monkeypatch.setattr(gate, "on_first_bytes", broken)
    eventually(lambda: reset_before_served(conn), timeout=scaled(5))
    ended = last_look(conn, peer, gate, lambda _: ("127.0.0.1", PORT))
    assert ended is not None and ended.verdict.reason is Reason.TUNNEL
    assert ended.verdict.action is Enforcement.BLOCK and "could not be judged" in ended.verdict.evidence
    assert ended.verdict.recorded
    conn.close()
    client.close()


@pytest.mark.parametrize("reset", [True, False])
def test_a_reset_client_is_judged_on_the_bytes_it_left(reset: bool) -> None:
    gate = allowed_gate(PORT, network=True)
    conn, peer, client = _accepted_after(STRATUM, reset)

    def settled() -> bool:
        assert reset_before_served(conn) is reset
        return True

    eventually(settled, timeout=scaled(5))
    ended = last_look(conn, peer, gate, lambda _: ("127.0.0.1", PORT))
    assert ended is not None and ended.verdict.reason is Reason.MINING
    assert ended.verdict.action is Enforcement.BLOCK and (ended.dst, ended.dport) == ("127.0.0.1", PORT)
    assert conn.recv(4096, socket.MSG_PEEK) == STRATUM  # peeked: nothing consumed
    conn.close()
    client.close()


def _no_destination(conn: socket.socket) -> tuple[str, int]:
    raise OSError(2, "no original destination")


def test_no_bytes_left_or_no_destination_is_nothing_to_record() -> None:
    gate = allowed_gate(PORT, network=True)
    conn, peer, client = _accepted_after(b"x", True)
    assert conn.recv(1) == b"x"  # what it sent, taken: nothing left to judge
    assert last_look(conn, peer, gate, lambda _: ("127.0.0.1", PORT)) is None
    conn.close()
    conn, peer, client = _accepted_after(STRATUM, True)
    assert last_look(conn, peer, gate, _no_destination) is None
    conn.close()
    client.close()


def test_the_front_records_a_reset_attempt_and_hands_nothing_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(front_module, "PEEK_WAIT", scaled(60))

    async def scenario() -> None:
        setup = _Setup(PORT, network=True)
        port, task = await _serving(setup)
        client = socket.create_connection(("127.0.0.1", port))
        client.sendall(STRATUM)
        _reset(client)

        async def recorded() -> bool:
            assert [r.verdict.reason for r in setup.reporter.reported] == [Reason.MINING]
            return True

        await eventually_async(recorded, timeout=10)
        assert setup.handed == [] and setup.front.handed_off == 0
        task.cancel()

    _run(scenario)


def test_a_long_prefix_before_the_reset_is_judged_as_the_relay_would() -> None:
    """17,000 blank lines then Stratum, reset: past the peek and the stream cap, unidentified (the network rule
    expects TLS or HTTP: strict), as mitmproxy's relay would have refused it; a benign request is nothing."""
    gate = allowed_gate(PORT, network=True)
    for data, reason in (
        (b"\n" * 17_000 + STRATUM, Reason.TUNNEL),
        (b"GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n", None),
    ):
        conn, peer, client = _accepted_after(data, True)

        def gone(conn: socket.socket = conn) -> bool:
            assert reset_before_served(conn)
            return True

        eventually(gone, timeout=scaled(5))
        ended = last_look(conn, peer, gate, lambda _: ("127.0.0.1", PORT))
        assert (ended.verdict.reason if ended is not None else None) is reason
        conn.close()
        client.close()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"GET / HTTP/1.1\r\nHost: allowed.test\r\n" + STRATUM, Reason.MINING),
        (b"GET / HTTP/1.1\r\nHost: allowed.test\r\nUser-Agent: curl/8.5.0\r\nAcc", None),
    ],
    ids=["stratum", "benign"],
)
def test_an_unfinished_head_left_by_a_reset_is_judged_by_the_pool_detectors(data: bytes, reason: Reason | None) -> None:
    """Red team 16: an HTTP head never finished (no blank line) with Stratum's lines in it, then a reset, was
    recorded nowhere (the gate waits for the rest of a head); an ordinary request cut short stays unrecorded."""
    gate = allowed_gate(PORT, network=True)
    conn, peer, client = _accepted_after(data, True)
    eventually(lambda: reset_before_served(conn), timeout=scaled(5))
    ended = last_look(conn, peer, gate, lambda _: ("127.0.0.1", PORT))
    assert (ended.verdict.reason if ended is not None else None) is reason, ended
    if ended is not None:
        assert (
            ended.verdict.action is Enforcement.BLOCK and "HTTP request head never finished" in ended.verdict.evidence
        )
    conn.close()
    client.close()
