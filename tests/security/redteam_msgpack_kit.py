"""Programs of test_redteam_msgpack: a fake Stratum pool that speaks msgpack-RPC (the same calls, each a msgpack
map ``{"id", "method", "params"}`` instead of a JSON object), and the miner in the sandbox that talks to it, over
a raw TCP stream. Fake both: no real mining software. A minimal msgpack (maps, arrays, strings, small ints, bools,
nil) is written here so the suite needs no msgpack package.

The pool (`pool_main`, in the internet namespace) reads msgpack values one after another on each connection and
answers subscribe, authorize and submit, each in msgpack (``share accepted`` in its log). The miner
(`miner_main`, in the sandbox) sends the three calls and prints ``share answered`` when the submit's answer came.
"""

from __future__ import annotations

from tests.security.redteam_wire import (
    SUBMIT_ID,
    Short,
    frames_miner,
    miner_argv,
    serve_frames,
    serve_pools,
    stratum_messages,
)


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


def _answer(message: object) -> tuple[bytes, bool]:
    assert isinstance(message, dict)
    method = message.get("method")
    print(f"pool got {method}", flush=True)
    result: object = [["mining.notify", "ae6812eb"], "08000002", 4] if method == "mining.subscribe" else True
    return pack({"id": message.get("id"), "result": result, "error": None}), method == "mining.submit"


def pool_main() -> None:
    """``python -c '...pool_main()' ADDRESS:PORT...``"""
    serve_pools(lambda conn: serve_frames(conn, unpack, _answer))


def miner_main() -> None:
    """``python -c '...miner_main()' ADDRESS|- PORT HOST``"""
    address, port, _host, _how = miner_argv()
    frames_miner(address, port, [(pack(call), _shared) for call in stratum_messages()], unpack)


def _shared(answer: object) -> bool:
    return isinstance(answer, dict) and answer.get("id") == SUBMIT_ID and answer.get("result") is True
