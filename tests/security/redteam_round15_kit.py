"""Programs of test_redteam_round15 (run in the sandbox): attempts timed against the front's waits and its
handoff, and pool calls carried where a TCP stream's reader does not look (IPv6 extension headers, urgent data,
a zero window).

`window_main VARIANT COUNT` makes ``COUNT`` attempts, each Stratum's subscribe and authorize in one write to the
pool's allowed address, then ends the connection after a pause swept over `PAUSES` (a reset, ``SO_LINGER`` 0; or a
half-close); it prints ``done`` and how many it made. `stream_main VARIANT` makes one attempt of the other kinds
and prints ``done``. Nothing here is mining software: the bytes are a pool client's opening, played once.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
import time

MARK = "rt15mark"
POOL4 = ("198.18.10.3", 3333)
POOL6 = ("2001:db8:10::3", 3333)
PACKAGE_PATH = b"/simple/pkg/pkg-1.0.tar.gz"
STRATUM = (
    b'{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1"]}\n'
    b'{"id":2,"method":"mining.authorize","params":["' + MARK.encode() + b'.worker","x"]}\n'
)
PAUSES = tuple(i * 0.0002 for i in range(50))
"""The pause between the write and the end, swept 0-10 ms in steps of 0.2 ms: the front's first look (a peek when
the bytes are readable), its handoff and mitmproxy's first read fall somewhere in it, where exactly the attacker
cannot see, so it tries them all."""
WINDOW = {
    "window-reset-stratum": (POOL4, True),
    "window-reset-stratum-v6": (POOL6, True),
    "window-fin-stratum": (POOL4, False),
    "window-reset-split-stratum": (POOL4, True),
}
"""Each window row's target and its end (True: a reset). ``split``: the first `OPENING` bytes (they name nothing)
in a write of their own, `SPLIT_PAUSE` (mitmproxy has read them), then the rest and the end after the swept
pause: the rest reaches a reader that is already waiting, or busy."""
OPENING = 9
SPLIT_PAUSE = 0.05


def _end(conn: socket.socket, reset: bool) -> None:
    if reset:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    else:
        conn.shutdown(socket.SHUT_WR)
    conn.close()


def _attempts(variant: str, count: int, first: int, made: list[int]) -> None:
    """``count`` attempts of ``variant``, the pauses taken from ``first`` on; each one made appended to ``made``."""
    target, reset = WINDOW[variant]
    for i in range(first, first + count):
        try:
            conn = socket.create_connection(target, timeout=5)
        except OSError:
            continue
        if variant.startswith("window-reset-split"):
            conn.sendall(STRATUM[:OPENING])
            time.sleep(SPLIT_PAUSE)
            conn.sendall(STRATUM[OPENING:])
        else:
            conn.sendall(STRATUM)
        pause = PAUSES[i % len(PAUSES)]
        if pause:
            end = time.perf_counter() + pause
            while time.perf_counter() < end:  # a busy wait: sleep's resolution is coarser than the steps
                pass
        _end(conn, reset)
        made.append(i)


def window_main() -> None:
    """``window_main VARIANT COUNT``: the attempts, one after another, each ended after the next pause of
    `PAUSES`."""
    variant, count = sys.argv[1], int(sys.argv[2])
    made: list[int] = []
    _attempts(variant, count, 0, made)
    print(f"done {len(made)}", flush=True)


def _pad_option(data: bytes) -> bytes:
    """An IPv6 options header's body (for IPV6_HOPOPTS / IPV6_DSTOPTS, next header and length filled by the
    kernel from the length byte): one option of type 0x1e (skip if unknown, RFC 8200 4.2) holding ``data``, padded
    to a multiple of 8 with PadN."""
    option = bytes([0x1E, len(data)]) + data
    header_len = 2 + len(option)
    pad = (-header_len) % 8
    if pad == 1:
        option += b"\x00"
    elif pad:
        option += bytes([0x01, pad - 2]) + bytes(pad - 2)
    body = b"\x00" + bytes([(header_len + pad) // 8 - 1]) + option
    return body


def stream_main() -> None:
    """``stream_main VARIANT``: one attempt of the stream rows."""
    variant = sys.argv[1]
    if variant in ("v6-hopopts-http", "v6-dstopts-http"):
        _extension_headers(variant)
    elif variant == "zero-window-stratum":
        _zero_window()
    elif variant == "oob-stratum":
        _urgent()
    elif variant == "tfo-cookie-stratum":
        _fast_open()
    elif variant == "bytewise-slow-stratum":
        _bytewise()
    print("done", flush=True)


def _extension_headers(variant: str) -> None:
    """An allowed HTTP request to allowed.lab over IPv6 (the package), every packet of it carrying Stratum's
    subscribe in a hop-by-hop or destination options header (the kernel adds it to each segment, the SYN too)."""
    option = socket.IPV6_HOPOPTS if variant == "v6-hopopts-http" else socket.IPV6_DSTOPTS
    piece = STRATUM[: STRATUM.index(b"\n") + 1]
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as conn:
        conn.setsockopt(socket.IPPROTO_IPV6, option, _pad_option(piece))
        conn.settimeout(5)
        # resolved through the gateway first: a host rule allows the addresses its resolver gave the name
        address = socket.getaddrinfo("allowed.lab", 80, socket.AF_INET6, socket.SOCK_STREAM)[0][4][0]
        conn.connect((address, 80))
        conn.sendall(b"GET " + PACKAGE_PATH + b" HTTP/1.1\r\nHost: allowed.lab\r\nConnection: close\r\n\r\n")
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := conn.recv(65536):
                answer += chunk
        print("answer", answer.split(b"\r\n", 1)[0].decode("ascii", "replace"), flush=True)


def _zero_window() -> None:
    """Stratum's opening, then a receive window of nothing held for 3 s (the client never reads; the smallest
    receive buffer): the front's waits and mitmproxy's writes towards the client meet a zero window."""
    conn = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
    conn.settimeout(5)
    conn.connect(POOL4)
    conn.sendall(STRATUM)
    time.sleep(3.0)  # the program's pause, not a test's wait: the window stays shut while the gateway works
    _end(conn, True)


def _urgent() -> None:
    """Stratum's calls, each line's last byte sent urgent (``MSG_OOB``): a reader with ``SO_OOBINLINE`` off reads
    each line without its newline, one the pool's would read with it."""
    with socket.create_connection(POOL4, timeout=5) as conn:
        try:
            for line in STRATUM.splitlines(keepends=True):
                conn.sendall(line[:-1])
                conn.send(line[-1:], socket.MSG_OOB)
            conn.recv(4096)
        except OSError as exc:  # the gateway cut the connection (it may on the subscribe alone): for the row's note
            print(f"cut: {exc.strerror}", flush=True)


TFO_SYSCTL = "/proc/sys/net/ipv4/tcp_fastopen"


def _fast_open() -> None:
    """TCP Fast Open as a client that asks for a cookie (``tcp_fastopen`` 1, the sandbox namespace's own): three
    connections, each Stratum's opening sent with the SYN (``MSG_FASTOPEN``); a server that gave a cookie on the
    first would take the data of the next ones with their SYN."""
    with open(TFO_SYSCTL) as current:
        before = current.read().strip()
    with open(TFO_SYSCTL, "w") as setting:
        setting.write("1")
    try:
        for _ in range(3):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as conn, contextlib.suppress(OSError):
                # blocking: a socket with a timeout is non-blocking inside, and a fast open without a cookie
                # then fails with EINPROGRESS instead of sending after the handshake
                conn.sendto(STRATUM, socket.MSG_FASTOPEN, POOL4)
                conn.settimeout(5)
                conn.recv(4096)
    finally:
        with open(TFO_SYSCTL, "w") as setting:
            setting.write(before)


BYTE_PAUSE = 0.04
"""The pause between one-byte segments: Stratum's 133 bytes take 5 s, far below the idle timeout, and every
segment comes after the front's and mitmproxy's reads of the one before."""


def _bytewise() -> None:
    """Stratum's calls one byte per segment (``TCP_NODELAY``), `BYTE_PAUSE` apart, then a read for an answer."""
    with socket.create_connection(POOL4, timeout=5) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for i in range(len(STRATUM)):
                conn.sendall(STRATUM[i : i + 1])
                time.sleep(BYTE_PAUSE)
            conn.recv(4096)
        except OSError as exc:  # the gateway cut the connection: where, for the row's note
            print(f"cut at byte {i}: {exc.strerror}", flush=True)
