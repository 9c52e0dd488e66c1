"""Programs of test_redteam_splice_close: a TLS site of the attacker's that stops reading, and a sandbox client that
uploads into it without end, so the bytes pile up inside the gateway (the front's relay: the sandbox side's receive
buffer, the splice pipe, the destination side's send buffer) while the connection is cut.

The site (`site_main`, in the internet namespace) serves TLS as allowed.lab (the lab's certificate) on the address
and port it is given, with a small receive buffer. Each connection reads `HOLD` bytes of the client's upload, says
``held``, then reads nothing more until the flag file exists; then it reads until the end and says ``done <bytes>
<how>``. The client (`upload_main`, in the sandbox) resolves allowed.lab through the gateway, opens ``count`` TLS
connections to the port and sends random bytes on each until its connection fails (``open <i>`` once each is up).
Plain uploads: no mining software, no pool. Also the WebSocket and plain-HTTP sites and uploads through mitmproxy
(`ws_site_main`, `ws_upload_main`, `http_upload_main`), and test_redteam_fastpath_cut's plain-HTTP site
(`fast_site_main`).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable

from tests.sockio import recv_until

HOLD = 256 * 1024
"""Bytes the site reads of each connection before it stops reading."""
CHUNK = 64 * 1024
"""Bytes the client sends per call."""
SITE_RCVBUF = 64 * 1024
"""The site's receive buffer (small: the window closes soon, and the rest waits in the gateway)."""


def _listen(host: str, port: int, receive_buffer: int = SITE_RCVBUF, backlog: int = 64) -> socket.socket:
    """A site's listening socket, its receive buffer small (the window closes soon); says ``listening``."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    listener.bind((host, port))
    listener.listen(backlog)
    print("listening", flush=True)
    return listener


def _serve_each(listener: socket.socket, serve: Callable[[socket.socket, int], None], say: bool = False) -> None:
    """Each connection accepted served in a thread of its own (``index``: its place in order); ``say``: says
    ``accepted <index>`` first."""
    index = 0
    while True:
        conn, _ = listener.accept()
        if say:
            print(f"accepted {index}", flush=True)
        threading.Thread(target=serve, args=(conn, index), daemon=True).start()
        index += 1


class _Tally:
    """The bytes a site has read of one connection (and dropped), counted as they come: a read that fails keeps
    the count of those before it, which the site's ``done`` line reports."""

    def __init__(self) -> None:
        self.got = 0

    def read(self, sock: socket.socket, limit: int | None = None) -> int:
        """Read until ``sock`` closes or, with ``limit``, until the count reaches it; the count."""
        while limit is None or self.got < limit:
            data = sock.recv(CHUNK)
            if not data:
                break
            self.got += len(data)
        return self.got


def _serve(conn: socket.socket, context: ssl.SSLContext, flag: pathlib.Path, index: int, hold: bool) -> None:
    tally, how = _Tally(), "eof"
    try:
        conn.settimeout(60)
        tls = context.wrap_socket(conn, server_side=True)
        if hold:
            print(f"held {index} {tally.read(tls, HOLD)}", flush=True)
        while hold and not flag.exists():
            time.sleep(0.05)
        tally.read(tls)
    except (OSError, ssl.SSLError) as error:
        how = type(error).__name__
    print(f"done {index} {tally.got} {how}", flush=True)
    conn.close()


def site_main() -> None:
    """``site_main HOST PORT STATE_DIR FLAG [HELD]``: the lab's allowed.lab certificate from the lab's STATE_DIR;
    with HELD, only the first HELD connections are held, the later ones read at once to their end."""
    from egress.lab import certs

    host, port, state, flag = sys.argv[1], int(sys.argv[2]), pathlib.Path(sys.argv[3]), pathlib.Path(sys.argv[4])
    held = int(sys.argv[5]) if len(sys.argv) > 5 else None
    chain, key = certs.ensure(state).servers["allowed"]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(chain, key)
    listener = _listen(host, port)
    _serve_each(listener, lambda conn, index: _serve(conn, context, flag, index, held is None or index < held))


def _upload(address: str, port: int, index: int, size: int | None = None) -> None:
    from egress.lab.sandbox_io import Context, connect, tls

    ctx = Context((), False, (), 30.0)
    sent = 0
    try:
        sock = tls(ctx, connect(ctx, address, port), "allowed.lab", verify=False)
        sock.settimeout(None if size is None else 60.0)
        print(f"open {index}", flush=True)
        block = os.urandom(CHUNK)
        while size is None or sent < size:
            sock.sendall(block)
            sent += len(block)
        print(f"sent {index} {sent}", flush=True)
        with contextlib.suppress(OSError):  # the TLS close, then the end: the site reads to its end
            sock.unwrap().close()
    except Exception as error:
        print(f"ended {index} {sent} {type(error).__name__}", flush=True)


def upload_main() -> None:
    """``upload_main NAMESERVER PORT COUNT [SIZE]``: COUNT uploads to allowed.lab:PORT at once, until each fails
    (with SIZE: each of SIZE bytes, then closed)."""
    from egress.lab.sandbox_io import Context, resolve

    nameserver, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    size = int(sys.argv[4]) if len(sys.argv) > 4 else None
    address = resolve(Context((nameserver,), False, (), 20.0), "allowed.lab")
    threads = [threading.Thread(target=_upload, args=(address, port, i, size)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B65"
TEXT = b"the quick brown fox jumps over the lazy dog; " * 91
"""One WebSocket message of the upload through mitmproxy (plain text, 4 KiB: nothing a detector looks for)."""


def _ws_serve(conn: socket.socket, flag: pathlib.Path, index: int, upgrade: bool = True) -> None:
    import base64
    import hashlib

    tally, how = _Tally(), "eof"
    try:
        conn.settimeout(60)
        head = recv_until(conn, b"\r\n\r\n", closed="no upgrade", size=4096)
        if upgrade:
            key = next(
                line.split(b":", 1)[1].strip()
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"sec-websocket-key")
            )
            accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
            conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")  # fmt: skip
        tally.got = len(head.split(b"\r\n\r\n", 1)[1])  # an HTTP request's: the head is not counted
        print(f"held {index} {tally.read(conn, HOLD)}", flush=True)
        while not flag.exists():
            time.sleep(0.05)
        tally.read(conn)
    except (OSError, StopIteration) as error:
        how = type(error).__name__
    print(f"done {index} {tally.got} {how}", flush=True)
    conn.close()


def ws_site_main() -> None:
    """``ws_site_main HOST PORT FLAG [http]``: a WebSocket site (plain HTTP) that stops reading after `HOLD` bytes;
    with ``http``, a site that takes a request's head and body the same way and never answers."""
    host, port, flag = sys.argv[1], int(sys.argv[2]), pathlib.Path(sys.argv[3])
    upgrade = sys.argv[4:] != ["http"]
    _serve_each(_listen(host, port), lambda conn, index: _ws_serve(conn, flag, index, upgrade))


def ws_upload_main() -> None:
    """``ws_upload_main NAMESERVER PORT``: a WebSocket to allowed.lab:PORT (through mitmproxy), text messages sent
    without end until the connection fails."""
    import base64

    from egress.lab.sandbox_io import Context, connect, resolve

    nameserver, port = sys.argv[1], int(sys.argv[2])
    ctx = Context((nameserver,), False, (), 20.0)
    sock = connect(ctx, resolve(ctx, "allowed.lab"), port)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(b"GET /ws HTTP/1.1\r\nHost: allowed.lab\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")  # fmt: skip
    answer = sock.recv(4096)
    print(f"open {answer.split(b' ', 2)[1].decode()}", flush=True)
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(TEXT))
    frame = bytes([0x81, 0x80 | 126]) + len(TEXT).to_bytes(2, "big") + mask + masked
    sent = 0
    sock.settimeout(None)
    try:
        while True:
            sock.sendall(frame)
            sent += len(frame)
    except OSError as error:
        print(f"ended {sent} {type(error).__name__}", flush=True)


POST_SIZE = 4 * 1024 * 1024
"""The body of `http_upload_main`'s POST: mitmproxy reads it whole, judges it, then writes it to the site."""


def http_upload_main() -> None:
    """``http_upload_main NAMESERVER PORT MODE``: one POST of `POST_SIZE` bytes of text to allowed.lab:PORT (plain
    HTTP, through mitmproxy). MODE ``wait``: then wait for the answer (none comes); ``close``: then close the
    connection (mitmproxy ends its server connection gracefully, the body still on its way)."""
    from egress.lab.sandbox_io import Context, connect, resolve

    nameserver, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    ctx = Context((nameserver,), False, (), 20.0)
    sock = connect(ctx, resolve(ctx, "allowed.lab"), port)
    sock.settimeout(None)
    sock.sendall(f"POST /upload HTTP/1.1\r\nHost: allowed.lab\r\nContent-Type: text/plain\r\n"
                 f"Content-Length: {POST_SIZE}\r\n\r\n".encode())  # fmt: skip
    sent = 0
    block = TEXT * 16
    try:
        while sent < POST_SIZE:
            part = block[: POST_SIZE - sent]
            sock.sendall(part)
            sent += len(part)
        print(f"sent {sent}", flush=True)
        if mode == "close":
            sock.close()
            print("closed", flush=True)
            return
        print(f"answer {sock.recv(4096)!r}", flush=True)
    except OSError as error:
        print(f"ended {sent} {type(error).__name__}", flush=True)


def _head(conn: socket.socket, data: bytes) -> tuple[bytes, bytes, bytes]:
    """A request's head read on from ``data`` (what was read past the one before): head, separator, the rest."""
    return recv_until(conn, b"\r\n\r\n", data, closed="no request", size=4096).partition(b"\r\n\r\n")


def _fast_serve(conn: socket.socket, index: int, flag: pathlib.Path, mode: str) -> None:
    tally, how, rest = _Tally(), "eof", b""
    try:
        while True:
            first, _, rest = _head(conn, rest)
            if mode == "silent" or first.startswith(b"POST"):
                break
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        tally.got = len(rest)
        print(f"held {index} {tally.got}", flush=True)
        while mode == "hold" and not flag.exists():
            time.sleep(0.05)
        tally.read(conn)
    except OSError as error:
        how = type(error).__name__
    print(f"done {index} {tally.got} {how}", flush=True)
    conn.close()


def fast_site_main() -> None:
    """``fast_site_main HOST PORT FLAG MODE``: test_redteam_fastpath_cut's plain-HTTP site, a 4 KiB receive buffer,
    ``accepted <i>`` said of each connection. ``hold``: each GET answered (keep-alive), a POST's head read, then
    nothing more until FLAG exists, then everything to the end (``done <i> <bytes> <how>``). ``silent``: the first
    request's head read, never answered, then read to the end."""
    host, port, flag, mode = sys.argv[1], int(sys.argv[2]), pathlib.Path(sys.argv[3]), sys.argv[4]
    _serve_each(_listen(host, port, 4096, 16), lambda conn, index: _fast_serve(conn, index, flag, mode), say=True)
