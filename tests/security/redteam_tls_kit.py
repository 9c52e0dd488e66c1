"""Programs of test_redteam_tls_upgrade: a fake Stratum pool that takes TLS after a plaintext opening (as a
STARTTLS server does), and the miner in the sandbox that talks to it. Fake both: no real mining software.

The pool (`pool_main`, in the internet namespace, on allowed.lab's address with the lab's allowed.lab
certificate) reads the client's opening: a first line (``STARTTLS``), answered ``220 go``, or none at all (the
client's first byte starts a TLS record), or a banner ``220 ready`` when the client stays silent for 2 s. Then
it speaks TLS as the server and reads newline-delimited Stratum:
subscribe, authorize and submit are each answered (``share accepted`` in its log).

The miner (`miner_main`, in the sandbox) resolves allowed.lab through the gateway, connects to PORT, sends the
opening (``starttls``: the line, then waits for ``220``; ``banner``: waits, silent, for the server's banner;
``direct``: nothing, TLS at once), then a ClientHello
naming allowed.lab (no certificate check: the client is the attacker's and trusts whatever answers) and its
Stratum exchange inside the TLS, and prints each answer line (``share answered`` when the submit's was).
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
import threading

HOST = "allowed.lab"
SUBMIT_ID = 3
_CALLS = [
    {"id": 1, "method": "mining.subscribe", "params": ["cpuminer/2.5.1"]},
    {"id": 2, "method": "mining.authorize", "params": ["wallet.worker", "x"]},
    {
        "id": SUBMIT_ID,
        "method": "mining.submit",
        "params": ["wallet.worker", "job1", "00000000", "5f5e1000", "1a2b3c4d"],
    },
]


def _line(conn: socket.socket | ssl.SSLSocket, buf: bytearray) -> bytes | None:
    while b"\n" not in buf:
        data = conn.recv(4096)
        if not data:
            return None
        buf += data
    at = buf.index(b"\n") + 1
    line = bytes(buf[:at])
    del buf[:at]
    return line


def _serve(conn: socket.socket, context: ssl.SSLContext) -> None:
    with conn:
        conn.settimeout(30)
        conn.settimeout(2)
        try:
            first = conn.recv(1, socket.MSG_PEEK)
        except TimeoutError:  # a silent client waits for a banner (a server-first protocol), then says its hello
            first = b""
            conn.sendall(b"220 ready\r\n")
        conn.settimeout(30)
        if first and first != b"\x16":  # a plaintext opening: one line, then TLS
            opening = _line(conn, bytearray())
            print(f"opening {opening!r}", flush=True)
            conn.sendall(b"220 go\r\n")
        with context.wrap_socket(conn, server_side=True) as tls:
            print(f"tls up {tls.version()}", flush=True)
            buf = bytearray()
            while (line := _line(tls, buf)) is not None:
                message = json.loads(line.strip(b"\x00\r\n "))
                method = message.get("method", "")
                print(f"pool got {method}", flush=True)
                if method == "mining.subscribe":
                    result: object = [[["mining.notify", "ae6812eb4cd7735a"]], "08000002", 4]
                else:
                    result = True
                tls.sendall(json.dumps({"id": message.get("id"), "result": result, "error": None}).encode() + b"\n")
                if method == "mining.submit":
                    print("share accepted", flush=True)


def pool_main() -> None:
    """``python -c '...pool_main()' ADDRESS PORT CHAIN KEY``"""
    address, port, chain, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, key)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, port))
    listener.listen(16)
    print("listening", flush=True)
    while True:
        conn, _ = listener.accept()

        def run(conn: socket.socket = conn) -> None:
            try:
                _serve(conn, context)
            except (OSError, ValueError) as exc:
                print(f"pool connection ended: {exc!r}", flush=True)

        threading.Thread(target=run, daemon=True).start()


def miner_main() -> None:
    """``python -c '...miner_main()' PORT HOW`` (HOW: ``starttls``, ``banner`` or ``direct``)."""
    port, how = int(sys.argv[1]), sys.argv[2]
    address = str(socket.getaddrinfo(HOST, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection((address, port), timeout=20)
    try:
        if how == "starttls":
            raw.sendall(b"STARTTLS\r\n")
            answer = _line(raw, bytearray())
            print(f"opening answered {answer!r}", flush=True)
            if answer is None:
                return
        elif how == "banner":
            answer = _line(raw, bytearray())
            print(f"banner {answer!r}", flush=True)
            if answer is None:
                return
        with context.wrap_socket(raw, server_hostname=HOST) as tls:
            print(f"tls up {tls.version()}", flush=True)
            buf = bytearray()
            for call in _CALLS:
                tls.sendall(json.dumps(call).encode() + b"\n")
                answer = _line(tls, buf)
                print(f"answer {answer!r}", flush=True)
                if answer is None:
                    return
                if call["id"] == SUBMIT_ID and b'"result": true' in answer:
                    print("share answered", flush=True)
    except (OSError, ValueError) as exc:
        print(f"miner ended: {exc!r}", flush=True)
    finally:
        raw.close()
