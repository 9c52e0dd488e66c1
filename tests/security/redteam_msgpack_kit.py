"""Programs of test_redteam_msgpack: a fake Stratum pool that speaks msgpack-RPC (the same calls, each a msgpack
map ``{"id", "method", "params"}`` instead of a JSON object), and the miner in the sandbox that talks to it, over
a raw TCP stream. Fake both: no real mining software. A minimal msgpack (maps, arrays, strings, small ints, bools,
nil) is written here so the suite needs no msgpack package.

The pool (`pool_main`, in the internet namespace) reads msgpack values one after another on each connection and
answers subscribe, authorize and submit, each in msgpack (``share accepted`` in its log). The miner
(`miner_main`, in the sandbox) sends the three calls and prints ``share answered`` when the submit's answer came.
"""

from __future__ import annotations

import socket
import sys

from tests.security.redteam_kit import serve_pools

SUBMIT_ID = 3
_CALLS: list[dict[str, object]] = [
    {"id": 1, "method": "mining.subscribe", "params": ["cpuminer/2.5.1"]},
    {"id": 2, "method": "mining.authorize", "params": ["wallet.worker", "x"]},
    {
        "id": SUBMIT_ID,
        "method": "mining.submit",
        "params": ["wallet.worker", "job1", "00000000", "5f5e1000", "1a2b3c4d"],
    },
]


def pack(value: object) -> bytes:
    """msgpack of ``value`` (None, bool, ints 0-127, str under 256 bytes, list and dict under 16 items)."""
    if value is None:
        return b"\xc0"
    if isinstance(value, bool):
        return b"\xc3" if value else b"\xc2"
    if isinstance(value, int) and 0 <= value < 128:
        return bytes([value])
    if isinstance(value, str):
        raw = value.encode()
        return (bytes([0xA0 | len(raw)]) if len(raw) < 32 else b"\xd9" + bytes([len(raw)])) + raw
    if isinstance(value, list):
        return bytes([0x90 | len(value)]) + b"".join(pack(item) for item in value)
    if isinstance(value, dict):
        return bytes([0x80 | len(value)]) + b"".join(pack(k) + pack(v) for k, v in value.items())
    raise TypeError(value)


class Short(Exception):
    """More bytes are needed."""


def _text(data: bytes, tag: int, at: int) -> tuple[object, int]:
    if tag == 0xD9:
        if at >= len(data):
            raise Short
        size, at = data[at], at + 1
    else:
        size = tag & 0x1F
    if at + size > len(data):
        raise Short
    return data[at : at + size].decode(), at + size


def _items(data: bytes, count: int, at: int) -> tuple[list[object], int]:
    items = []
    for _ in range(count):
        item, at = unpack(data, at)
        items.append(item)
    return items, at


def unpack(data: bytes, at: int = 0) -> tuple[object, int]:
    """One msgpack value from ``data`` at ``at``, and where the next starts (`Short` when it is cut)."""
    if at >= len(data):
        raise Short
    tag = data[at]
    at += 1
    if tag < 0x80:
        return tag, at
    if tag in (0xC0, 0xC2, 0xC3):
        return {0xC0: None, 0xC2: False, 0xC3: True}[tag], at
    if 0xA0 <= tag < 0xC0 or tag == 0xD9:
        return _text(data, tag, at)
    if 0x90 <= tag < 0xA0:
        return _items(data, tag & 0x0F, at)
    if 0x80 <= tag < 0x90:
        flat, at = _items(data, 2 * (tag & 0x0F), at)
        return {str(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}, at
    raise ValueError(f"tag {tag:#x}")


def _serve(conn: socket.socket) -> None:
    buf = b""
    while data := conn.recv(4096):
        buf += data
        while True:
            try:
                message, at = unpack(buf)
            except Short:
                break
            buf = buf[at:]
            assert isinstance(message, dict)
            method = message.get("method")
            print(f"pool got {method}", flush=True)
            result: object = [["mining.notify", "ae6812eb"], "08000002", 4] if method == "mining.subscribe" else True
            conn.sendall(pack({"id": message.get("id"), "result": result, "error": None}))
            if method == "mining.submit":
                print("share accepted", flush=True)


def pool_main() -> None:
    """``python -c '...pool_main()' ADDRESS:PORT...``"""
    serve_pools(_serve)


def miner_main() -> None:
    """``python -c '...miner_main()' ADDRESS|- PORT HOST``"""
    address, port, host = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if address == "-":
        address = str(socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
    try:
        with socket.create_connection((address, port), timeout=15) as sock:
            buf = b""
            for call in _CALLS:
                sock.sendall(pack(call))
                while True:
                    try:
                        answer, at = unpack(buf)
                        buf = buf[at:]
                        break
                    except Short:
                        data = sock.recv(4096)
                        if not data:
                            print("miner: closed", flush=True)
                            return
                        buf += data
                print(f"answer {answer!r}", flush=True)
                if isinstance(answer, dict) and answer.get("id") == SUBMIT_ID and answer.get("result") is True:
                    print("share answered", flush=True)
    except OSError as exc:
        print(f"miner ended: {exc!r}", flush=True)
