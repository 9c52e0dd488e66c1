"""Programs of the second red team's flood module (tests/security/test_redteam_flood.py), run in the sandbox.

`flood_main` holds many idle connections to an allowed name (resolved first, so each is allowed and waits for
its first bytes in a proxy worker); `probe_main` makes one mining attempt a second, each from an address of its own
inside the sandbox's network, so that every attempt has a record of its own to look for. Plain sockets; the pool
is the red-team listener (`tests.security.redteam_kit.listener_main`).
"""

from __future__ import annotations

import os
import resource
import socket
import struct
import sys
import time

SUBSCRIBE = b'{"id":1,"method":"mining.subscribe","params":["f100d/1.0"]}\n'
FD_LIMIT = 19_000
"""Descriptors per flooding process (the lab's hard limit is 20,000)."""


def resolve(name: str, resolver: str) -> int:
    """Ask ``resolver`` for ``name``'s A record (so the gateway binds it for the sandbox); the rcode."""
    labels = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\x00"
    query = struct.pack(">HHHHHH", 0xF100, 0x0100, 1, 0, 0, 0) + labels + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(query, (resolver, 53))
        return sock.recv(512)[3] & 0x0F


def _hold(address: str, port: int, count: int, seconds: float) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))
    held = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.connect((address, port))
        except BlockingIOError:
            pass
        except OSError:
            sock.close()
            continue
        held.append(sock)
    print(f"holding {len(held)} idle connections to {address}:{port}", flush=True)
    time.sleep(seconds)


def flood_main() -> None:
    """``python -c '...flood_main()' NAME RESOLVER ADDRESS PORT[,PORT...] COUNT SECONDS``: resolve ``NAME``, then
    hold ``COUNT`` idle connections to ``ADDRESS`` on each port (one process per port) for ``SECONDS``."""
    name, resolver, address, ports, count, seconds = sys.argv[1:7]
    print(f"resolved {name}: rcode {resolve(name, resolver)}", flush=True)
    children = []
    for port in ports.split(","):
        pid = os.fork()
        if pid == 0:
            try:
                _hold(address, int(port), int(count), float(seconds))
            finally:
                os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    print("flood over", flush=True)


def probe_main() -> None:
    """``python -c '...probe_main()' POOL PORT SOURCE...``: one Stratum subscribe a second to ``POOL``:``PORT``,
    each from the next ``SOURCE``; prints ``attempt SOURCE sent|refused ANSWER`` per attempt."""
    pool, port, sources = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    for source in sources:
        started = time.monotonic()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((source, 0))
            sock.settimeout(3)
            try:
                sock.connect((pool, port))
                sock.sendall(SUBSCRIBE)
            except OSError as error:
                print(f"attempt {source} refused {error!r}", flush=True)
            else:
                try:
                    answer = sock.recv(200)
                except OSError as error:
                    answer = repr(error).encode()
                print(f"attempt {source} sent {answer[:60]!r}", flush=True)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
