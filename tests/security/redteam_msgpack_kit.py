"""Programs of test_redteam_msgpack: a fake Stratum pool that speaks msgpack-RPC (the same calls, each a msgpack
map ``{"id", "method", "params"}`` instead of a JSON object), and the miner in the sandbox that talks to it, over
a raw TCP stream. Fake both: no real mining software. A minimal msgpack (maps, arrays, strings, small ints, bools,
nil) is written here so the suite needs no msgpack package.

The pool (`pool_main`, in the internet namespace) reads msgpack values one after another on each connection and
answers subscribe, authorize and submit, each in msgpack (``share accepted`` in its log). The miner
(`miner_main`, in the sandbox) sends the three calls and prints ``share answered`` when the submit's answer came.
"""

from __future__ import annotations

from collections.abc import Callable

from tests.security import redteam_wire as wire

ReadText = Callable[[bytes, int, int], tuple[object, int]]
"""Reads the value of a tag `unpack` does not know (its data, the tag, where its content starts)."""


def _str(raw: bytes) -> bytes:
    """A msgpack str (fixstr, or str8 from 32 bytes) holding ``raw``."""
    return (bytes([0xA0 | len(raw)]) if len(raw) < 32 else b"\xd9" + bytes([len(raw)])) + raw


def pack(value: object, text: Callable[[bytes], bytes] = _str) -> bytes:
    """msgpack of ``value`` (None, bool, ints 0-127, str under 256 bytes, list and dict under 16 items); ``text``
    writes a string's UTF-8 (as a str; redteam_binsplit_kit writes ext values)."""
    if value is None:
        return b"\xc0"
    if isinstance(value, bool):
        return b"\xc3" if value else b"\xc2"
    if isinstance(value, int) and 0 <= value < 128:
        return bytes([value])
    if isinstance(value, str):
        return text(value.encode())
    if isinstance(value, list):
        return bytes([0x90 | len(value)]) + b"".join(pack(item, text) for item in value)
    if isinstance(value, dict):
        return bytes([0x80 | len(value)]) + b"".join(pack(k, text) + pack(v, text) for k, v in value.items())
    raise TypeError(value)


def _read_str(data: bytes, tag: int, at: int) -> tuple[object, int]:
    """A str (fixstr or str8)."""
    if not (0xA0 <= tag < 0xC0 or tag == 0xD9):
        raise ValueError(f"tag {tag:#x}")
    if tag == 0xD9:
        if at >= len(data):
            raise wire.Short
        size, at = data[at], at + 1
    else:
        size = tag & 0x1F
    if at + size > len(data):
        raise wire.Short
    return data[at : at + size].decode(), at + size


def _items(data: bytes, count: int, at: int, text: ReadText) -> tuple[list[object], int]:
    items = []
    for _ in range(count):
        item, at = unpack(data, at, text)
        items.append(item)
    return items, at


def unpack(data: bytes, at: int = 0, text: ReadText = _read_str) -> tuple[object, int]:
    """One msgpack value from ``data`` at ``at``, and where the next starts (`Short` when it is cut); ``text``
    reads any other tag than nil, bool, positive fixint, fixarray and fixmap (a str; ValueError for the rest)."""
    if at >= len(data):
        raise wire.Short
    tag = data[at]
    at += 1
    if tag < 0x80:
        return tag, at
    if tag in (0xC0, 0xC2, 0xC3):
        return {0xC0: None, 0xC2: False, 0xC3: True}[tag], at
    if 0x90 <= tag < 0xA0:
        return _items(data, tag & 0x0F, at, text)
    if 0x80 <= tag < 0x90:
        flat, at = _items(data, 2 * (tag & 0x0F), at, text)
        return {str(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}, at
    return text(data, tag, at)


def answer_to(message: object) -> dict[str, object]:
    """The pool's answer to a call (a map): for subscribe, the notify pair, extranonce1 and its size; else True."""
    assert isinstance(message, dict)
    result: object = (
        [["mining.notify", "ae6812eb"], "08000002", 4] if message.get("method") == "mining.subscribe" else True
    )
    return {"id": message.get("id"), "result": result, "error": None}


def share_answered(answer: object) -> bool:
    return isinstance(answer, dict) and answer.get("id") == wire.SUBMIT_ID and answer.get("result") is True


def _answer(message: object) -> tuple[bytes, bool]:
    assert isinstance(message, dict)
    method = message.get("method")
    print(f"pool got {method}", flush=True)
    return pack(answer_to(message)), method == "mining.submit"


def pool_main() -> None:
    """``python -c '...pool_main()' ADDRESS:PORT...``"""
    wire.serve_pools(lambda conn: wire.serve_frames(conn, unpack, _answer))


def miner_main() -> None:
    """``python -c '...miner_main()' ADDRESS|- PORT HOST``"""
    address, port, _host, _how = wire.miner_argv()
    wire.frames_miner(address, port, [(pack(call), share_answered) for call in wire.stratum_messages()], unpack)
