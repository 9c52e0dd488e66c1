"""What the red-team kits (tests/security/redteam_*_kit.py) share on the wire, so that each keeps only its
encoding and what its pool answers: the Stratum calls the miners send, the pool's listeners (`serve_pools` for a
raw stream, `serve_http` for a `PoolHandler`) and its answer loop over decoded messages (`serve_frames`), and the
miner's side in the sandbox: its arguments (`miner_argv`: ``ADDRESS|- PORT HOST HOW...``, what
`tests.security.redteam_http.attempt` passes) and its exchanges, of decoded messages (`frames_miner`) or of HTTP
requests (`http_miner`, `http_calls`).

What the modules judge by is written here once: a pool logs ``share accepted`` for each share it answered, a miner
prints ``share answered`` when its share's answer came (``miner: closed``, ``miner ended: ...`` when it could not).
"""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import BinaryIO

SUBMIT_ID = 3
STRATUM_CALLS: list[tuple[int, str, list[str]]] = [
    (1, "mining.subscribe", ["cpuminer/2.5.1"]),
    (2, "mining.authorize", ["wallet.worker", "x"]),
    (SUBMIT_ID, "mining.submit", ["wallet.worker", "job1", "00000000", "5f5e1000", "1a2b3c4d"]),
]
"""Stratum's subscribe, authorize and submit (the share, ``SUBMIT_ID``): (id, method, params) each."""


def stratum_messages() -> list[dict[str, object]]:
    """`STRATUM_CALLS` as JSON-RPC objects (keys ``id``, ``method``, ``params`` in that order)."""
    return [{"id": ident, "method": method, "params": params} for ident, method, params in STRATUM_CALLS]


class Short(Exception):
    """More bytes are needed (a kit's decoder, on a cut message)."""


Decode = Callable[[bytes], tuple[object, int]]
"""A kit's decoder: the first message of a buffer and where the next starts; `Short` when it is cut."""
FrameCall = tuple[bytes, Callable[[object], bool]]
"""A call on a raw stream: its bytes, and whether an answer (decoded) says the share was taken."""
HttpCall = tuple[str, bytes]
"""A call over HTTP: its method (printed, and given to the miner's ``shared``) and its request."""
ENDED: tuple[type[Exception], ...] = (OSError, ValueError, AssertionError)
"""What ends one pool connection quietly (logged as ``pool connection ended``) by default."""


def serve_pools(serve: Callable[[socket.socket], None], ended: tuple[type[Exception], ...] = ENDED) -> None:
    """A kit's pool: listen on each ``ADDRESS:PORT`` of ``sys.argv[1:]``, serve each connection with ``serve`` in a
    thread of its own (closed after it; an ``ended`` error printed as ``pool connection ended``), until killed."""
    for spec in sys.argv[1:]:
        address, port = spec.rsplit(":", 1)
        listener = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((address, int(port)))
        listener.listen(16)

        def accept(listener: socket.socket = listener) -> None:
            while True:
                conn, _ = listener.accept()

                def run(conn: socket.socket = conn) -> None:
                    with conn:
                        try:
                            serve(conn)
                        except ended as exc:
                            print(f"pool connection ended: {exc!r}", flush=True)

                threading.Thread(target=run, daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
    print("listening", flush=True)
    threading.Event().wait()


def serve_frames(conn: socket.socket, decode: Decode, answer: Callable[[object], tuple[bytes, bool]]) -> None:
    """A pool's answer loop on a raw stream: each message ``decode`` reads from ``conn``, in turn, answered with
    ``answer``'s bytes (``share accepted`` logged after them when ``answer`` says the message was a share)."""
    buf = b""
    while data := conn.recv(4096):
        buf += data
        while buf:
            try:
                message, at = decode(buf)
            except Short:
                break
            buf = buf[at:]
            reply, share = answer(message)
            conn.sendall(reply)
            if share:
                print("share accepted", flush=True)


class PoolHandler(BaseHTTPRequestHandler):
    """An HTTP pool's requests: HTTP/1.1 keep-alive, no access log; `send_body` answers 200 with a body."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def send_body(self, body: bytes, kind: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve_http(handler: type[BaseHTTPRequestHandler]) -> None:
    """A kit's HTTP pool: ``handler`` on each ``ADDRESS:PORT`` of ``sys.argv[1:]``, a thread a connection, until
    killed."""
    for spec in sys.argv[1:]:
        address, port = spec.rsplit(":", 1)
        server = ThreadingHTTPServer((address, int(port)), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("listening", flush=True)
    threading.Event().wait()


def miner_argv() -> tuple[str, int, str, list[str]]:
    """The miner's ``ADDRESS|- PORT HOST HOW...``: the address to connect to (``-``: HOST resolved through the
    gateway's resolver, which binds the name to its address), the port, HOST (for a Host header), and the HOW
    arguments."""
    address, port, host = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if address == "-":
        address = str(socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
    return address, port, host, sys.argv[4:]


def send_whole(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)


def frames_miner(
    address: str,
    port: int,
    calls: Iterable[FrameCall],
    decode: Decode,
    *,
    nodelay: bool = False,
    send: Callable[[socket.socket, bytes], None] = send_whole,
) -> None:
    """A miner on a raw stream: for each (call, shared) of ``calls``, the call sent (``send``), its answer read
    whole (``decode``) and printed, ``share answered`` when ``shared(answer)``. ``nodelay``: TCP_NODELAY."""
    try:
        with socket.create_connection((address, port), timeout=15) as sock:
            if nodelay:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buf = b""
            for data, shared in calls:
                send(sock, data)
                while True:
                    try:
                        answer, at = decode(buf)
                        buf = buf[at:]
                        break
                    except Short:
                        more = sock.recv(4096)
                        if not more:
                            print("miner: closed", flush=True)
                            return
                        buf += more
                print(f"answer {answer!r}", flush=True)
                if shared(answer):
                    print("share answered", flush=True)
    except OSError as exc:
        print(f"miner ended: {exc!r}", flush=True)


def http_exchange(reader: BinaryIO, conn: socket.socket, data: bytes) -> tuple[bytes, bytes] | None:
    """Send ``data`` (nothing when empty: the answer to a request already sent) and read one Content-Length
    response through ``reader`` (``conn``'s buffered reader): its status line and body; None when it ends first."""
    if data:
        conn.sendall(data)
    status = reader.readline().rstrip(b"\r\n")
    if not status:
        return None
    length = 0
    while (line := reader.readline()) not in (b"\r\n", b"\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = reader.read(length)
    return (status, body) if len(body) == length else None


def http_calls(
    reader: BinaryIO, conn: socket.socket, calls: Iterable[HttpCall], shared: Callable[[str, bytes], bool]
) -> None:
    """For each (method, request) of ``calls``: `http_exchange`, its answer printed; stop at an answer that is not
    ``200 OK``; ``share answered`` when ``shared(method, body)``."""
    for method, request in calls:
        got = http_exchange(reader, conn, request)
        print(f"answer to {method}: {got!r}", flush=True)
        if got is None or not got[0].endswith(b" 200 OK"):
            return
        if shared(method, got[1]):
            print("share answered", flush=True)


def http_miner(address: str, port: int, calls: Iterable[HttpCall], shared: Callable[[str, bytes], bool]) -> None:
    """A miner over HTTP keep-alive: `http_calls` on one connection."""
    try:
        with socket.create_connection((address, port), timeout=10) as conn:
            http_calls(conn.makefile("rb"), conn, calls, shared)
    except OSError as exc:
        print(f"miner ended: {exc!r}", flush=True)
