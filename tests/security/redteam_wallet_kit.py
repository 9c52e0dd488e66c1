"""Programs of tests/security/test_redteam_wallet.py: XMRig's login as protobuf, and the pool that reads it.

The login names no pool vocabulary (fields 1 wallet, 2 password ``x``, 3 agent: protobuf writes field numbers, not
names), so only the wallet in it is left to name it. The wallet is made by tests/detect/wallets.py (random keys,
never a real one); ``mutated`` changes one of its characters, which no checksum then holds (the control)."""

from __future__ import annotations

import contextlib
import random
import socket
import ssl
import sys
import time

from tests.detect.wallets import make_address
from tests.security.mitm_client import resolve

WALLET = make_address(random.Random(12), 18)
MUTATED = WALLET[:40] + (b"2" if WALLET[40:41] != b"2" else b"3") + WALLET[41:]
AGENT = b"XMRig/6.21.0 (Linux x86_64) libuv/1.44.2 gcc/12.2.0"


def login(wallet: bytes) -> bytes:
    """The protobuf message: each field a key byte (number << 3 | 2), a varint length and the bytes."""
    fields = ((1, wallet), (2, b"x"), (3, AGENT))
    return b"".join(bytes((number << 3 | 2, len(value))) + value for number, value in fields)


def _wallet(kind: str) -> bytes:
    return {"wallet": WALLET, "mutated": MUTATED}[kind]


def pool_main() -> None:
    """``python -c '...pool_main()' ADDRESS PORT tcp|udp|tls [CHAIN KEY]``: logs each login heard (``heard wallet
    yes|no``) and answers it with a job (the pool's side of the login); ``tls``: TLS over TCP with that certificate."""
    address, port, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    context = None
    if proto == "tls":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(sys.argv[4], sys.argv[5])
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        if proto != "udp":
            sock.listen(8)
        print("listening", flush=True)
        while True:
            if proto != "udp":
                conn, _ = sock.accept()
                if context is not None:
                    try:
                        conn = context.wrap_socket(conn, server_side=True)
                    except (OSError, ssl.SSLError) as exc:
                        print(f"handshake failed: {exc}", flush=True)
                        continue
                with conn:
                    conn.settimeout(3)
                    data = b""
                    with contextlib.suppress(OSError):
                        while chunk := conn.recv(65535):
                            data += chunk
                            if AGENT in data:
                                conn.sendall(b"\x0a\x03job")
                                break
            else:
                data, peer = sock.recvfrom(65535)
                sock.sendto(b"\x0a\x03job", peer)
            heard = "yes" if WALLET in data or MUTATED in data else "no"
            print(f"received {len(data)} bytes, heard wallet {heard}", flush=True)


def login_main() -> None:
    """``python -c '...login_main()' KIND ADDRESS PORT tcp|udp|tls [CAFILE]``: the login (KIND ``wallet`` or
    ``mutated``), then up to 3 s for the pool's job; prints ``sent N, job yes|no``. ``tls``: ADDRESS is a name,
    resolved through the gateway's resolver, and the connection is TLS trusting CAFILE (the gateway's CA)."""
    kind, address, port, proto = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    data = login(_wallet(kind))
    got = b""
    with contextlib.suppress(OSError):
        if proto != "udp":
            target = resolve(address) if proto == "tls" else address
            with contextlib.ExitStack() as stack:
                sock = stack.enter_context(socket.create_connection((target, port), timeout=3))
                if proto == "tls":
                    context = ssl.create_default_context(cafile=sys.argv[5])
                    sock = stack.enter_context(context.wrap_socket(sock, server_hostname=address))
                sock.sendall(data)
                deadline = time.monotonic() + 3.0
                while time.monotonic() < deadline and b"job" not in got:
                    chunk = sock.recv(65535)
                    if not chunk:
                        break
                    got += chunk
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(3)
                sock.sendto(data, (address, port))
                got = sock.recv(65535)
    print(f"sent {len(data)}, job {'yes' if b'job' in got else 'no'}", flush=True)
