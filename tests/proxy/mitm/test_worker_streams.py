"""What is not one HTTP request through a real worker to the attacker's site: WebSocket messages for the whole
connection, upgrades to anything else, non-HTTP inside intercepted TLS, HTTP/2 streams. Ground truth is the site's
own log; every block is recorded."""

from __future__ import annotations

import contextlib
import gzip
import os
import socket
import ssl

import h2.config
import h2.connection
import h2.events
import pytest
import wsproto
import wsproto.events

from egress.decide import Reason
from tests.proxy.mitm.site import GREETING
from tests.proxy.mitm.worker import EXPLODE, Worker, read_all, read_response
from tests.proxy.test_front import _client_hello
from tests.waiting import eventually

SUBSCRIBE = b'{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1"]}\n'
MARKER = b"mining.subscribe"


pytestmark = pytest.mark.usefixtures("fresh_log")


class Client:
    """A WebSocket client (wsproto) on a connection through the worker."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        sock.sendall(self.ws.send(wsproto.events.Request(host="allowed.lab", target="/ws")))
        assert isinstance(self._next(), wsproto.events.AcceptConnection)

    def _next(self) -> wsproto.events.Event | None:
        while True:
            for event in self.ws.events():
                return event
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionError, ssl.SSLError, TimeoutError):
                chunk = b""
            if not chunk:
                return None
            self.ws.receive_data(chunk)

    def say(self, data: bytes | str) -> bool:
        """Send one message; True when the site acknowledged it, False when the connection ended instead."""
        message = wsproto.events.TextMessage(data) if isinstance(data, str) else wsproto.events.BytesMessage(data)
        try:
            self.sock.sendall(self.ws.send(message))
        except (ConnectionError, ssl.SSLError):
            return False
        event = self._next()
        return isinstance(event, wsproto.events.TextMessage) and event.data == "ack"

    def ping(self, payload: bytes) -> bool:
        """Send a ping; True when its pong came back, False when the connection ended instead."""
        try:
            self.sock.sendall(self.ws.send(wsproto.events.Ping(payload)))
        except (ConnectionError, ssl.SSLError):
            return False
        event = self._next()
        return isinstance(event, wsproto.events.Pong) and bytes(event.payload) == payload


BENIGN_KB: bytes | str = '{"type":"chat","text":"' + "la " * 330 + '"}'

EVASIONS: dict[str, list[bytes | str]] = {
    "mining-after-16kb": [BENIGN_KB] * 20 + [SUBSCRIBE.decode()],
    "mining-split-over-messages": ['{"id":1,"method":"mini', 'ng.subscribe","params":["cpuminer/2.5.1"]}\n'],
    "mining-binary": [BENIGN_KB, SUBSCRIBE],
    "random-binary": [BENIGN_KB, os.urandom(2048)],
    "random-binary-after-benign-binary": [b"\x00\x01" * 600, os.urandom(2048)],
    "tls-in-binary": [BENIGN_KB, _client_hello("blocked.lab")],
    "ssh-in-binary": [BENIGN_KB, b"SSH-2.0-OpenSSH_9.6\r\n" + os.urandom(300)],
}


@pytest.mark.parametrize("name", sorted(EVASIONS))
def test_websocket_messages_are_inspected_for_the_whole_connection(worker: Worker, name: str) -> None:
    worker.to("tls")
    *benign, evil = EVASIONS[name]
    with worker.connect(True) as sock:
        sport = sock.getsockname()[1]
        client = Client(sock)
        assert all(client.say(message) for message in benign)  # positive control: the site got these
        assert not client.say(evil)  # dropped, and the connection severed
        assert read_all(sock) == b""
    evil_bytes = evil if isinstance(evil, bytes) else evil.encode()
    assert evil_bytes not in worker.site.received("ws")
    assert MARKER not in b"".join(worker.site.received("ws").split(b"\n"))
    [block] = eventually(lambda: worker.reported.blocks(sport))
    assert block.verdict.reason in {Reason.MINING, Reason.TUNNEL}


def test_benign_websocket_traffic_passes(worker: Worker) -> None:
    worker.to("tls")
    with worker.connect(True) as sock:
        sport = sock.getsockname()[1]
        client = Client(sock)
        assert all(client.say(message) for message in [BENIGN_KB] * 40 + [b"\x00\x01\x02" * 500])
    assert worker.site.received("ws").count(b"chat") == 40
    assert worker.reported.blocks(sport) == []


def test_an_error_inspecting_a_websocket_message_severs_the_connection(worker: Worker) -> None:
    worker.to("tls")
    with worker.connect(True) as sock:
        sport = sock.getsockname()[1]
        client = Client(sock)
        assert client.say(BENIGN_KB)
        assert not client.say(EXPLODE.decode())
    assert EXPLODE not in worker.site.received()
    [block] = eventually(lambda: worker.reported.blocks(sport))
    assert block.verdict.rule == "fail-closed"


@pytest.mark.parametrize("tls", [True, False], ids=["decrypted", "plain"])
@pytest.mark.parametrize(
    "upgrade",
    ["rawtcp", "h2c", "websocket, rawtcp", "TLS/1.2", "websocket-but-POST"],
)
def test_an_unknown_upgrade_is_refused_before_it_is_forwarded(worker: Worker, upgrade: str, tls: bool) -> None:
    worker.to("tls" if tls else "plain")
    method, value = ("POST", "websocket") if upgrade == "websocket-but-POST" else ("GET", upgrade)
    request = f"{method} /up HTTP/1.1\r\nHost: allowed.lab\r\nConnection: Upgrade\r\nUpgrade: {value}\r\n"
    request += "HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\nContent-Length: 0\r\n\r\n"
    with worker.connect(tls) as sock:
        sport = sock.getsockname()[1]
        sock.sendall(request.encode())
        answer = read_response(sock)
        assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            # As if the switch had happened: read as a (bad) next request, not relayed. The blank line ends that
            # request's head, so the worker answers it (or closes) at once instead of waiting for more of it.
            sock.sendall(SUBSCRIBE + b"\r\n\r\n")
        read_all(sock)  # until the worker closes: the bad request is answered, nothing waits on a quiet second
    assert b"/up" not in worker.site.received() and MARKER not in worker.site.received()
    block, *refused = eventually(lambda: worker.reported.blocks(sport))
    assert block.verdict.finding is not None and block.verdict.finding.protocol == "unknown-upgrade"
    # the bytes after the 403, a request line mitmproxy cannot parse, are refused and recorded too (or the
    # connection was closed before they were read)
    assert all(r.verdict.rule == "http-protocol" for r in refused) and len(refused) <= 1


@pytest.mark.parametrize("tls", [True, False], ids=["decrypted", "plain"])
def test_a_101_the_client_did_not_ask_for_never_opens_a_raw_relay(worker: Worker, tls: bool) -> None:
    worker.to("tls" if tls else "plain")
    with worker.connect(tls) as sock:
        sport = sock.getsockname()[1]
        sock.sendall(b"GET /switch HTTP/1.1\r\nHost: allowed.lab\r\n\r\n")
        answer = read_response(sock)
        assert not answer.startswith(b"HTTP/1.1 101"), answer[:200]
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            sock.sendall(SUBSCRIBE)
        read_all(sock)
    assert b"GET /switch" in worker.site.received("request")  # positive control: the site did answer 101
    assert worker.site.received("raw") == b""
    [block] = eventually(lambda: worker.reported.blocks(sport))
    assert block.verdict.finding is not None and block.verdict.finding.protocol == "unknown-upgrade"


RAW_INSIDE_TLS: dict[str, bytes] = {
    "stratum": SUBSCRIBE,
    "stratum-after-newline": b"\n" + SUBSCRIBE,
    "tls-in-tls": _client_hello("blocked.lab"),
}


@pytest.mark.parametrize("name", sorted(RAW_INSIDE_TLS))
def test_non_http_inside_intercepted_tls_goes_through_the_detectors(worker: Worker, name: str) -> None:
    worker.to("tls")
    with worker.connect(True, alpn=()) as sock:
        sport = sock.getsockname()[1]
        sock.sendall(RAW_INSIDE_TLS[name])
        read_all(sock)
    assert worker.site.received("raw") == b""
    assert MARKER not in worker.site.received()
    [block] = eventually(lambda: worker.reported.blocks(sport))
    assert block.verdict.reason in {Reason.MINING, Reason.TUNNEL}


def test_benign_non_http_inside_intercepted_tls_is_relayed(worker: Worker) -> None:
    worker.to("tls")
    with worker.connect(True, alpn=()) as sock:
        sock.sendall(b"* HELO allowed.lab, plain words of no protocol\r\n")
        eventually(lambda: b"HELO" in worker.site.received("raw"))


def _h2_post(conn: h2.connection.H2Connection, stream: int, body: bytes) -> None:
    headers = [(":method", "POST"), (":path", "/api"), (":authority", "allowed.lab"), (":scheme", "https")]
    conn.send_headers(stream, [*headers, ("content-length", str(len(body)))])
    conn.send_data(stream, body, end_stream=True)


def test_http2_a_later_stream_with_mining_json_is_blocked(worker: Worker) -> None:
    worker.to("tls")
    with worker.connect(True, alpn=("h2",)) as sock:
        assert isinstance(sock, ssl.SSLSocket) and sock.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        for stream, body in ((1, b'{"q":"one"}'), (3, b'{"q":"two"}'), (5, SUBSCRIBE)):
            _h2_post(conn, stream, body)
        sock.sendall(conn.data_to_send())
        statuses: dict[int, str] = {}
        while len(statuses) < 3:
            data = sock.recv(65536)
            assert data, statuses
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    statuses[event.stream_id] = dict(event.headers)[b":status"].decode()
            sock.sendall(conn.data_to_send())
    assert statuses == {1: "200", 3: "200", 5: "403"}
    assert b'"q":"two"' in worker.site.received("body")
    assert MARKER not in worker.site.received()


@pytest.mark.parametrize("tls", [True, False], ids=["decrypted", "plain"])
def test_http_after_a_server_greeting_is_refused(worker: Worker, tls: bool) -> None:
    """A server that speaks first gets the connection relayed through the detectors (a server-first protocol);
    an HTTP request from the client then would skip the HTTP layer (no body decoding, no Host check)."""
    worker.to("tls-greeting" if tls else "greeting")
    body = gzip.compress(SUBSCRIBE)
    with worker.connect(tls, alpn=()) as sock:
        sport = sock.getsockname()[1]
        assert sock.recv(100) == GREETING  # positive control: the server's banner came through
        sock.sendall(b"POST /api HTTP/1.1\r\nHost: allowed.lab\r\nContent-Encoding: gzip\r\n")
        sock.sendall(f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        read_all(sock)
    assert b"POST" not in worker.site.received()
    [block] = eventually(lambda: worker.reported.blocks(sport))
    assert block.verdict.finding is not None and block.verdict.finding.protocol == "http-after-greeting"


def test_a_server_first_protocol_inside_intercepted_tls_still_works(worker: Worker) -> None:
    worker.to("tls-greeting")
    with worker.connect(True, alpn=()) as sock:
        assert sock.recv(100) == GREETING
        sock.sendall(b"a1 LOGIN agent secret-but-not-a-miner\r\n")
        eventually(lambda: b"a1 LOGIN" in worker.site.received("raw"))


def test_websocket_ping_payloads_are_inspected_too(worker: Worker) -> None:
    """mitmproxy relays pings and pongs without an addon hook; a submit fits in a ping's 125 bytes."""
    worker.to("tls")
    submit = b'{"id":4,"method":"mining.submit","params":["w","j1","0","5f5e","a1b2"]}'
    with worker.connect(True) as sock:
        sport = sock.getsockname()[1]
        client = Client(sock)
        assert client.ping(b"keepalive-1")  # positive control: a plain ping and its pong
        assert client.say(BENIGN_KB)
        assert not client.ping(submit)
        assert read_all(sock) == b""
    assert worker.site.received("ws-ping") == b"keepalive-1"
    assert b"mining" not in worker.site.received()
    [block] = eventually(lambda: worker.reported.blocks(sport))
    assert block.verdict.reason is Reason.MINING


def test_a_json_call_split_between_a_message_and_a_ping_is_seen_whole(worker: Worker) -> None:
    worker.to("tls")
    with worker.connect(True) as sock:
        sport = sock.getsockname()[1]
        client = Client(sock)
        assert client.say(SUBSCRIBE[:30].decode())
        assert not client.ping(SUBSCRIBE[30:])
    assert MARKER not in b"".join(worker.site.received(kind) for kind in ("ws", "ws-ping"))
    [block] = eventually(lambda: worker.reported.blocks(sport))
    assert block.verdict.reason is Reason.MINING


@pytest.mark.parametrize("tls", [True, False], ids=["decrypted", "plain"])
def test_an_upgrade_the_policy_allows_is_relayed_through_the_detectors(worker: Worker, tls: bool) -> None:
    worker.to("tls" if tls else "plain")
    request = b"GET /up HTTP/1.1\r\nHost: allowed.lab\r\nConnection: Upgrade\r\nUpgrade: x-inspected\r\n\r\n"
    with worker.connect(tls) as sock:  # positive control: the switched stream is relayed
        sock.sendall(request)
        assert read_response(sock).startswith(b"HTTP/1.1 101")
        sock.sendall(b"* hello over the switched protocol\r\n")
        eventually(lambda: b"hello over" in worker.site.received("raw"))
    with worker.connect(tls) as sock:
        sport = sock.getsockname()[1]
        sock.sendall(request)
        assert read_response(sock).startswith(b"HTTP/1.1 101")
        sock.sendall(SUBSCRIBE)
        read_all(sock)
    assert MARKER not in worker.site.received()
    [block] = eventually(lambda: worker.reported.blocks(sport))
    assert block.verdict.reason is Reason.MINING


def test_a_held_partial_message_reaches_the_site_after_the_bound_through_a_real_worker(worker: Worker) -> None:
    """The hold-back's wakeup in a real mitmproxy: a client that sends part of a JSON value and waits gets it
    through after `holdback.HOLD_FOR`; the bytes before the value went at once."""
    worker.to("tls")
    with worker.connect(True, alpn=()) as sock:
        sock.sendall(b'* HELO allowed.lab {"id":1,"method":"server.')
        eventually(lambda: b"HELO" in worker.site.received("raw"))
        assert b'{"id"' not in worker.site.received("raw")  # held: the message is still open
        eventually(lambda: b'"method":"server.' in worker.site.received("raw"), timeout=10)


def test_a_mining_message_in_small_pieces_never_reaches_the_site_through_a_real_worker(worker: Worker) -> None:
    worker.to("tls")
    with worker.connect(True, alpn=()) as sock:
        sport = sock.getsockname()[1]
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError):
            sock.sendall(b"* HELO allowed.lab\r\n")
            for at in range(0, len(SUBSCRIBE), 5):
                sock.sendall(SUBSCRIBE[at : at + 5])
        read_all(sock)
    [block] = eventually(lambda: worker.reported.blocks(sport))
    assert block.verdict.reason is Reason.MINING
    assert b'{"id"' not in worker.site.received("raw")


STRATUM = SUBSCRIBE + b'{"id":2,"method":"mining.authorize","params":["rt16.worker","x"]}\n'


@pytest.mark.parametrize(
    "kept_alive", ["", "answered", "pipelined"], ids=["first-request", "after-a-request", "pipelined"]
)
@pytest.mark.parametrize("lines", [STRATUM, b"User-Agent: curl/8.5.0\r\nAcc"], ids=["stratum", "benign"])
def test_an_unfinished_head_inside_intercepted_tls_is_judged_at_the_clients_end(
    worker: Worker, lines: bytes, kept_alive: str
) -> None:
    """Red team 16: inside intercepted TLS (the decrypt list) mitmproxy's HTTP layer holds a request head never
    finished (no blank line) and, at the client's end, logs it and closes: Stratum's lines where the next header
    lines would be went unrecorded. Now judged by the pool detectors at the end: ``mining``; an ordinary request
    cut short is nothing. Nothing of it reaches the site either way."""
    worker.to("tls")
    with worker.connect(True) as sock:
        sport = sock.getsockname()[1]
        first = b"GET / HTTP/1.1\r\nHost: allowed.lab\r\n\r\n"
        if kept_alive == "answered":
            sock.sendall(first)
            assert read_response(sock).startswith(b"HTTP/1.1 200")
        unfinished = b"GET /unfinished HTTP/1.1\r\nHost: allowed.lab\r\n" + lines
        sock.sendall(first + unfinished if kept_alive == "pipelined" else unfinished)
        assert isinstance(sock, ssl.SSLSocket)
        # close_notify: the client's end inside the TLS; the worker's close follows the head's judgement (an
        # error: the worker closed without its own close_notify, as much an end)
        with contextlib.suppress(ssl.SSLError, OSError):
            assert read_all(sock.unwrap()) == b""
    blocks = worker.reported.blocks(sport)
    if lines == STRATUM:
        assert [b.verdict.reason for b in blocks] == [Reason.MINING], blocks
        assert "HTTP request head never finished" in blocks[0].verdict.evidence
    else:
        assert blocks == []
    assert b"/unfinished" not in worker.site.received()
