"""Programs of test_redteam_binsplit: Stratum in two standard binary encodings whose strings are not one
length-prefixed run of bytes, a fake pool that reads both, and the miner in the sandbox. Fake both: no real
mining software; the encoders and decoders are written here (msgpack's on redteam_msgpack_kit's, strings as ext
values) so the suite needs no package.

- ``cbor``: CBOR (RFC 8949) with every string of 6 bytes or more an *indefinite-length text string* (§3.2.3:
  ``7f``, definite chunks, ``ff``), cut in its middle: ``mining.subscribe`` is ``7f 68 "mining.s" 68 "ubscribe"
  ff``. Every CBOR decoder joins the chunks into one string.
- ``msgext``: msgpack with every string written as an ext8 value (``c7 L 01 bytes``, ext type 1): the byte before
  the name is the ext type, not its length.

The variants past the fix (binrpc joins CBOR's chunks and reads a length then a type):

- ``cbor1``: every string of 6 bytes or more an indefinite-length *byte* string (``5f``) of one-byte chunks with
  an empty chunk before each (``5f 40 41 "m" 40 41 "i" ... ff``);
- ``fixext``: msgpack with every string of up to 16 bytes a fixext of the next size (``d4``-``d8``), NUL-padded,
  ext type ``A`` (a printable byte before the name), longer ones ext8 of that type;
- ``trickle``: ``cbor``, one byte a TCP segment (``TCP_NODELAY``, a millisecond apart): every name across packets.
- ``cbor-late`` (stop 32): plain CBOR, every string definite, each call's ``method`` last, after a 40-byte text
  value: a text string's head is a letter (``60|L``, ``78 L``), so the name had only text in the 16 bytes before it,
  where binrpc wanted a byte that no text holds.

The pool (`pool_main`) tells the two apart by the first byte of each value (CBOR map ``a0|n``, msgpack fixmap
``80|n``) and answers in the same encoding (``share accepted`` in its log). The miner (`miner_main ADDRESS|- PORT
HOST MODE`) prints ``share answered`` when the submit's answer came.
"""

from __future__ import annotations

import functools
import socket
import time
from collections.abc import Callable

from tests.security import redteam_wire as wire
from tests.security.redteam_msgpack_kit import answer_to, pack, share_answered, unpack


def _cbor_head(major: int, size: int) -> bytes:
    return bytes([major << 5 | size]) if size < 24 else bytes([major << 5 | 24, size])


def cbor(value: object, ones: bool = False) -> bytes:
    """CBOR of ``value`` (None, bool, ints 0-255, str, list, dict); strings of 6+ bytes chunked in two (``ones``:
    a byte string of one-byte chunks, each after an empty one)."""
    if value is None:
        return b"\xf6"
    if isinstance(value, bool):
        return b"\xf5" if value else b"\xf4"
    if isinstance(value, int):
        return _cbor_head(0, value)
    if isinstance(value, str):
        raw = value.encode()
        if len(raw) < 6:
            return _cbor_head(3, len(raw)) + raw
        if ones:
            return b"\x5f" + b"".join(b"\x40\x41" + raw[i : i + 1] for i in range(len(raw))) + b"\xff"
        half = len(raw) // 2
        return b"\x7f" + _cbor_head(3, half) + raw[:half] + _cbor_head(3, len(raw) - half) + raw[half:] + b"\xff"
    if isinstance(value, list):
        return _cbor_head(4, len(value)) + b"".join(cbor(item, ones) for item in value)
    if isinstance(value, dict):
        return _cbor_head(5, len(value)) + b"".join(cbor(k, ones) + cbor(v, ones) for k, v in value.items())
    raise TypeError(value)


def _need(data: bytes, end: int) -> None:
    if end > len(data):
        raise wire.Short


def _cbor_size(data: bytes, tag: int, at: int) -> tuple[int, int]:
    low = tag & 0x1F
    if low < 24:
        return low, at
    _need(data, at + 1)
    return data[at], at + 1


def uncbor(data: bytes, at: int = 0) -> tuple[object, int]:
    """One CBOR value from ``data`` at ``at`` and where the next starts (`Short` when cut)."""
    _need(data, at + 1)
    tag = data[at]
    at += 1
    major = tag >> 5
    if tag in (0xF4, 0xF5, 0xF6):
        return {0xF4: False, 0xF5: True, 0xF6: None}[tag], at
    if tag in (0x5F, 0x7F):
        parts: list[str] = []
        while True:
            _need(data, at + 1)
            if data[at] == 0xFF:
                return "".join(parts), at + 1
            part, at = uncbor(data, at)
            parts.append(str(part))
    size, at = _cbor_size(data, tag, at)
    if major == 0:
        return size, at
    if major in (2, 3):
        _need(data, at + size)
        return data[at : at + size].decode(), at + size
    if major in (4, 5):
        items = []
        for _ in range(size * (2 if major == 5 else 1)):
            item, at = uncbor(data, at)
            items.append(item)
        if major == 4:
            return items, at
        return {str(items[i]): items[i + 1] for i in range(0, len(items), 2)}, at
    raise ValueError(f"tag {tag:#x}")


def cbor_late(value: object) -> bytes:
    """Plain CBOR of ``value`` (no chunks), a call's ``method`` last, after a 40-byte ``note``; no miner's name in
    it (the identity detector names ``cpuminer``: the row is about the method's string)."""
    if isinstance(value, dict) and "method" in value:
        value = {**{k: v for k, v in value.items() if k != "method"}, "note": "client/2.5.1 " + "n" * 27,
                 "method": value["method"]}  # fmt: skip
    if isinstance(value, str):
        raw = value.replace("cpuminer", "client").encode()
        return _cbor_head(3, len(raw)) + raw
    if isinstance(value, list):
        return _cbor_head(4, len(value)) + b"".join(cbor_late(item) for item in value)
    if isinstance(value, dict):
        return _cbor_head(5, len(value)) + b"".join(cbor_late(k) + cbor_late(v) for k, v in value.items())
    return cbor(value)


def _ext(raw: bytes, fixed: bool) -> bytes:
    if fixed and len(raw) <= 16:
        power = max(len(raw) - 1, 0).bit_length()
        return bytes([0xD4 + power]) + b"A" + raw.ljust(1 << power, b"\x00")
    return b"\xc7" + bytes([len(raw)]) + (b"A" if fixed else b"\x01") + raw


def msgext(value: object, fixed: bool = False) -> bytes:
    """msgpack of ``value`` (redteam_msgpack_kit's), every string an ext8 of type 1 (``fixed``: a NUL-padded fixext
    of type ``A`` when it fits 16 bytes, else an ext8 of that type)."""
    return pack(value, functools.partial(_ext, fixed=fixed))


def _read_ext(data: bytes, tag: int, at: int) -> tuple[object, int]:
    """An ext8 or a fixext of any type, read as a string (NUL padding stripped)."""
    if tag == 0xC7:
        _need(data, at + 2)
        size = data[at]
        _need(data, at + 2 + size)
        return data[at + 2 : at + 2 + size].decode(), at + 2 + size
    if 0xD4 <= tag <= 0xD8:
        size = 1 << (tag - 0xD4)
        _need(data, at + 1 + size)
        return data[at + 1 : at + 1 + size].rstrip(b"\x00").decode(), at + 1 + size
    raise ValueError(f"tag {tag:#x}")


def unmsgext(data: bytes, at: int = 0) -> tuple[object, int]:
    """One msgpack value (redteam_msgpack_kit's; an ext8 or a fixext of any type read as a string) from ``data``
    at ``at``."""
    return unpack(data, at, _read_ext)


CODECS: dict[str, tuple[Callable[[object], bytes], Callable[[bytes], tuple[object, int]]]] = {
    "cbor": (cbor, uncbor),
    "msgext": (msgext, unmsgext),
    "cbor1": (functools.partial(cbor, ones=True), uncbor),
    "fixext": (functools.partial(msgext, fixed=True), unmsgext),
    "trickle": (cbor, uncbor),
    "cbor-late": (cbor_late, uncbor),
}
"""Each mode's (encode, decode); the pool answers in ``cbor`` or ``msgext``, which every decoder here reads."""


def _send(sock: socket.socket, data: bytes, trickle: bool) -> None:
    """Send ``data`` whole, or (``trickle``) one byte a segment, a millisecond apart."""
    if not trickle:
        sock.sendall(data)
        return
    for index in range(len(data)):
        sock.sendall(data[index : index + 1])
        time.sleep(0.001)


def _take(buf: bytes) -> tuple[object, int]:
    """The pool's next call and its mode (``cbor``, ``cbor-late`` or ``msgext``, by its first byte and chunks), to
    answer in."""
    mode = "cbor" if 0xA0 <= buf[0] < 0xB8 else "msgext"
    message, at = CODECS[mode][1](buf)
    if mode == "cbor" and b"\x7f" not in buf[:at] and b"\x5f" not in buf[:at]:
        mode = "cbor-late"  # no chunked string: answered as it asked (the pool's answer named nothing either)
    return (message, mode), at


def _answer(taken: object) -> tuple[bytes, bool]:
    assert isinstance(taken, tuple)
    message, mode = taken
    assert isinstance(message, dict)
    method = message.get("method")
    print(f"pool got {method} ({mode})", flush=True)
    return CODECS[mode][0](answer_to(message)), method == "mining.submit"


def pool_main() -> None:
    """``python -c '...pool_main()' ADDRESS:PORT...``"""
    wire.serve_pools(lambda conn: wire.serve_frames(conn, _take, _answer))


def miner_main() -> None:
    """``python -c '...miner_main()' ADDRESS|- PORT HOST MODE``"""
    address, port, _host, (mode,) = wire.miner_argv()
    encode, decode = CODECS[mode]
    calls = [(encode(call), share_answered) for call in wire.stratum_messages()]
    send = functools.partial(_send, trickle=mode == "trickle")
    wire.frames_miner(address, port, calls, decode, nodelay=True, send=send)
