"""Programs of tests/security/test_redteam_wallet.py: XMRig's login as protobuf, and the pool that reads it.

The login names no pool vocabulary (fields 1 wallet, 2 password ``x``, 3 agent: protobuf writes field numbers, not
names), so only the wallet in it is left to name it. The wallet is made by tests/detect/wallets.py (random keys,
never a real one); ``mutated`` changes one of its characters, which no checksum then holds (the control)."""

from __future__ import annotations

import contextlib
import random
import socket
import sys
import time

from tests.detect.wallets import make_address

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
    """``python -c '...pool_main()' ADDRESS PORT tcp|udp``: logs each login heard (``heard wallet yes|no``) and
    answers it with a job (the pool's side of the login)."""
    address, port, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        if proto == "tcp":
            sock.listen(8)
        print("listening", flush=True)
        while True:
            if proto == "tcp":
                conn, _ = sock.accept()
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
    """``python -c '...login_main()' KIND ADDRESS PORT tcp|udp``: the login (KIND ``wallet`` or ``mutated``), then
    up to 3 s for the pool's job; prints ``sent N, job yes|no``."""
    kind, address, port, proto = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    data = login(_wallet(kind))
    got = b""
    with contextlib.suppress(OSError):
        if proto == "tcp":
            with socket.create_connection((address, port), timeout=3) as sock:
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
