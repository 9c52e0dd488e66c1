"""Programs of test_redteam_round12b: a plaintext pool and site on the internet side, the agent's openings to the
front from the sandbox. Fake pools only: no mining software.

`pool_main` (internet side) reads each connection's bytes as lines, prints what it got (``got N bytes marker
yes|no``) and answers every line that holds a Stratum or XMRig call with a result (``answered METHOD``);
`tls_echo_main` is a real TLS server (the lab's certificate for allowed.lab) that echoes lines, for the benign
control. `client_main` (sandbox) opens one connection (or `MANY`) to the front and plays a `VARIANTS` opening: a
real ClientHello (made by Python's ssl module, through a memory BIO) naming allowed.lab, then Stratum's subscribe
and authorize in clear, cut and paced as the variant says; it prints the answers it read (``answer ...``).
"""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable

MARK = "5ec7e7-rt12b"
HOST = "allowed.lab"
STRATUM = (
    json.dumps({"id": 1, "method": "mining.subscribe", "params": ["cpuminer/2.5.1"]}) + "\n"
    + json.dumps({"id": 2, "method": "mining.authorize", "params": [f"{MARK}.worker", "x"]}) + "\n"
).encode()  # fmt: skip
RECORD = b"\x17\x03\x03\x00\x01\x00"
"""An application-data record of one byte: what a client sends to outlast the shape watch cheaply."""
RECORDS = 170
"""Records before the Stratum (`egress.detect.tlsshape.MAX_RECORDS` is 160)."""
MANY = 64
"""Connections the ``many-late`` variant opens before any of them speaks."""
READ_FOR = 3.0
"""Seconds the client reads answers after its last write."""


def client_hello(sni: str = HOST) -> bytes:
    """A real ClientHello naming ``sni`` (TLS 1.2-1.3, Python's defaults)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _pieces(conn: socket.socket, data: bytes, size: int, pause: float) -> None:
    for at in range(0, len(data), size):
        conn.send(data[at : at + size])
        time.sleep(pause)


def _plain(conn: socket.socket, hello: bytes) -> None:
    conn.sendall(hello + b"\n" + STRATUM)


def _paused(conn: socket.socket, hello: bytes) -> None:
    conn.sendall(hello)
    time.sleep(0.5)
    conn.sendall(b"\n" + STRATUM)


def _bytewise(conn: socket.socket, hello: bytes) -> None:
    _pieces(conn, hello, 1, 0.002)
    conn.sendall(b"\n" + STRATUM)


def _near_deadline(conn: socket.socket, hello: bytes) -> None:
    """The record header at once (the front waits `HELLO_WAIT`, 5 s from the accept), the rest and the Stratum in
    one segment 4.7 s later."""
    conn.sendall(hello[:5])
    time.sleep(4.7)
    conn.sendall(hello[5:] + b"\n" + STRATUM)


def _silent_then(delay: float) -> Callable[[socket.socket, bytes], None]:
    def play(conn: socket.socket, hello: bytes) -> None:
        time.sleep(delay)
        conn.sendall(hello + b"\n" + STRATUM)

    return play


def _records(conn: socket.socket, hello: bytes) -> None:
    conn.sendall(hello)
    time.sleep(0.2)
    conn.sendall(RECORD * RECORDS)
    time.sleep(0.2)
    conn.sendall(b"\n" + STRATUM)


def _after_server_hello(conn: socket.socket, hello: bytes) -> None:
    """With the attacker's own server, which answers a real ServerHello (`pool_main` ``serverhello``): records
    enough to end the watch (over 160, and over the SSH opening's 32 KiB), then the Stratum."""
    conn.sendall(hello)
    conn.settimeout(5)
    print(f"server said {len(conn.recv(4096))} bytes", flush=True)
    conn.sendall(bytes([23, 3, 3, 1, 44]) + bytes(300))  # the client's Finished (TLS 1.3)
    conn.sendall((bytes([23, 3, 3, 1, 44]) + bytes(300)) * RECORDS)
    time.sleep(0.2)
    conn.sendall(b"\n" + STRATUM)


def _garbage_first(conn: socket.socket, hello: bytes) -> None:
    conn.sendall(b"\x00\n" + hello + b"\n" + STRATUM)


def _urgent(conn: socket.socket, hello: bytes) -> None:
    conn.sendall(hello)
    time.sleep(0.2)
    conn.send(b"\n" + STRATUM, socket.MSG_OOB)  # the last byte urgent, the rest in band


def _half_closed(conn: socket.socket, hello: bytes) -> None:
    conn.sendall(hello + b"\n" + STRATUM)
    conn.shutdown(socket.SHUT_WR)


def _reset(conn: socket.socket, hello: bytes) -> None:
    """Hello and Stratum, then a reset at once: races the front's hand-off to the relay."""
    conn.sendall(hello + b"\n" + STRATUM)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def _second_hello(conn: socket.socket, hello: bytes) -> None:
    conn.sendall(hello + client_hello(f"{MARK}.blocked.lab") + b"\n" + STRATUM)


VARIANTS: dict[str, Callable[[socket.socket, bytes], None]] = {
    "hello-stratum": _plain,
    "hello-pause-stratum": _paused,
    "hello-bytewise-stratum": _bytewise,
    "hello-near-deadline-stratum": _near_deadline,
    "silent-then-hello-stratum": _silent_then(0.9),
    "silent-past-peek-hello-stratum": _silent_then(1.3),
    "records-then-stratum": _records,
    "serverhello-records-then-stratum": _after_server_hello,
    "garbage-then-hello-stratum": _garbage_first,
    "urgent-stratum": _urgent,
    "half-closed-stratum": _half_closed,
    "reset-after-stratum": _reset,
    "second-hello-stratum": _second_hello,
}


def _address(host: str, port: int) -> str:
    return str(socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])


def _read(conn: socket.socket) -> bytes:
    got = b""
    conn.settimeout(READ_FOR)
    try:
        while data := conn.recv(4096):
            got += data
    except OSError:
        pass
    return got


def client_main() -> None:
    """``python -c '...client_main()' HOST PORT VARIANT`` (HOST: allowed.lab, resolved through the gateway, or an
    address; VARIANT: one of `VARIANTS`, or ``many-late``: `MANY` connections opened, then each sends
    ``hello-stratum`` at once)."""
    host, port, variant = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    address = _address(host, port)
    hello = client_hello()
    conns: list[socket.socket] = []
    try:
        for _ in range(MANY if variant == "many-late" else 1):
            conn = socket.create_connection((address, port), timeout=20)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conns.append(conn)
        if variant == "many-late":
            time.sleep(0.3)  # every one accepted before it speaks: each waits in the front's poller
            for conn in conns:
                conn.sendall(hello + b"\n" + STRATUM)
        else:
            VARIANTS[variant](conns[0], hello)
        for conn in conns:
            answer = _read(conn)
            print(f"answer {len(answer)} bytes {answer[:200]!r}", flush=True)
    except OSError as exc:
        print(f"client ended: {exc!r}", flush=True)
    finally:
        for conn in conns:
            conn.close()
    print("done", flush=True)


def _serve_lines(conn: socket.socket, server_hello: bytes = b"") -> None:
    got = bytearray()
    answered = 0
    conn.settimeout(30)
    try:
        while data := conn.recv(65536):
            if server_hello and not got and data[:1] == b"\x16":
                conn.sendall(server_hello)
            got += data
            lines = bytes(got).split(b"\n")
            for line in lines[answered:-1]:
                answered += 1
                start = line.find(b"{")
                try:
                    call = json.loads(line[start:]) if start >= 0 else None
                except ValueError:
                    call = None
                if isinstance(call, dict) and "method" in call:
                    conn.sendall(json.dumps({"id": call.get("id"), "result": True, "error": None}).encode() + b"\n")
                    print(f"answered {call['method']}", flush=True)
    except OSError as exc:
        print(f"connection ended: {exc!r}", flush=True)
    finally:
        conn.close()
        marker = "yes" if MARK.encode() in got else "no"
        print(f"got {len(got)} bytes marker {marker}", flush=True)


def _listen(address: str, port: int) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))
    listener.listen(256)
    print("listening", flush=True)
    return listener


def pool_main() -> None:
    """``python -c '...pool_main()' ADDRESS PORT [serverhello]`` (``serverhello``: a real TLS 1.3 ServerHello
    record, recorded in the lab, answers a client whose first byte is a handshake record's)."""
    from tests.detect.tlsshape_traces import SSH_EXEC  # a recorded TLS 1.3 ServerHello

    server_hello = bytes.fromhex(SSH_EXEC[0]) if sys.argv[3:] == ["serverhello"] else b""
    listener = _listen(sys.argv[1], int(sys.argv[2]))
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_serve_lines, args=(conn, server_hello), daemon=True).start()


def _echo(conn: socket.socket, context: ssl.SSLContext) -> None:
    try:
        with context.wrap_socket(conn, server_side=True) as tls:
            while data := tls.recv(4096):
                tls.sendall(data)
    except (OSError, ValueError) as exc:
        print(f"echo ended: {exc!r}", flush=True)


def tls_echo_main() -> None:
    """``python -c '...tls_echo_main()' ADDRESS PORT CHAIN KEY``"""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[3], sys.argv[4])
    listener = _listen(sys.argv[1], int(sys.argv[2]))
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_echo, args=(conn, context), daemon=True).start()


def tls_client_main() -> None:
    """``python -c '...tls_client_main()' HOST PORT``: a real TLS session naming allowed.lab; 40 lines echoed."""
    host, port = sys.argv[1], int(sys.argv[2])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection((_address(host, port), port), timeout=20)
    with raw, context.wrap_socket(raw, server_hostname=HOST) as tls:
        echoed = 0
        for index in range(40):
            line = f"benign {index}\n".encode()
            tls.sendall(line)
            got = b""
            while len(got) < len(line):
                got += tls.recv(4096)
            echoed += got == line
        print(f"echoed {echoed} {tls.version()}", flush=True)
