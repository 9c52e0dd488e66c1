"""Programs of test_redteam_splice_close: a TLS site of the attacker's that stops reading, and a sandbox client that
uploads into it without end, so the bytes pile up inside the gateway (the front's relay: the sandbox side's receive
buffer, the splice pipe, the destination side's send buffer) while the connection is cut.

The site (`site_main`, in the internet namespace) serves TLS as allowed.lab (the lab's certificate) on the address
and port it is given, with a small receive buffer. Each connection reads `HOLD` bytes of the client's upload, says
``held``, then reads nothing more until the flag file exists; then it reads until the end and says ``done <bytes>
<how>``. The client (`upload_main`, in the sandbox) resolves allowed.lab through the gateway, opens ``count`` TLS
connections to the port and sends random bytes on each until its connection fails (``open <i>`` once each is up).
Plain uploads: no mining software, no pool.
"""

from __future__ import annotations

import os
import pathlib
import socket
import ssl
import sys
import threading
import time

HOLD = 256 * 1024
"""Bytes the site reads of each connection before it stops reading."""
CHUNK = 64 * 1024
"""Bytes the client sends per call."""
SITE_RCVBUF = 64 * 1024
"""The site's receive buffer (small: the window closes soon, and the rest waits in the gateway)."""


def _serve(conn: socket.socket, context: ssl.SSLContext, flag: pathlib.Path, index: int) -> None:
    got, how = 0, "eof"
    try:
        conn.settimeout(60)
        tls = context.wrap_socket(conn, server_side=True)
        while got < HOLD:
            data = tls.recv(CHUNK)
            if not data:
                break
            got += len(data)
        print(f"held {index} {got}", flush=True)
        while not flag.exists():
            time.sleep(0.05)
        while True:
            data = tls.recv(CHUNK)
            if not data:
                break
            got += len(data)
    except (OSError, ssl.SSLError) as error:
        how = type(error).__name__
    print(f"done {index} {got} {how}", flush=True)
    conn.close()


def site_main() -> None:
    """``site_main HOST PORT STATE_DIR FLAG``: the lab's allowed.lab certificate from the lab's STATE_DIR."""
    from egress.lab import certs

    host, port, state, flag = sys.argv[1], int(sys.argv[2]), pathlib.Path(sys.argv[3]), pathlib.Path(sys.argv[4])
    chain, key = certs.ensure(state).servers["allowed"]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(chain, key)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SITE_RCVBUF)
    listener.bind((host, port))
    listener.listen(64)
    print("listening", flush=True)
    index = 0
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_serve, args=(conn, context, flag, index), daemon=True).start()
        index += 1


def _upload(address: str, port: int, index: int) -> None:
    from egress.lab.sandbox_io import Context, connect, tls

    ctx = Context((), False, (), 30.0)
    sent = 0
    try:
        sock = tls(ctx, connect(ctx, address, port), "allowed.lab", verify=False)
        sock.settimeout(None)
        print(f"open {index}", flush=True)
        block = os.urandom(CHUNK)
        while True:
            sock.sendall(block)
            sent += len(block)
    except Exception as error:
        print(f"ended {index} {sent} {type(error).__name__}", flush=True)


def upload_main() -> None:
    """``upload_main NAMESERVER PORT COUNT``: COUNT uploads to allowed.lab:PORT at once, until each fails."""
    from egress.lab.sandbox_io import Context, resolve

    nameserver, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    address = resolve(Context((nameserver,), False, (), 20.0), "allowed.lab")
    threads = [threading.Thread(target=_upload, args=(address, port, i)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
