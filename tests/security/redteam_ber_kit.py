"""Programs of test_redteam_ber: Stratum's calls in ASN.1 BER (X.690) with every string in its *constructed*
form, a fake pool that reads it, and the miner in the sandbox. Fake both: no real mining software; the encoder
and decoder are written here so the suite needs no package.

X.690 §8.7.3 and §8.23.6: an OCTET STRING, and a restricted character string (UTF8String, tag 12), may be encoded
constructed: the tag with bit 6 set (``24``, ``2c``), then OCTET STRING segments (``04 L bytes``), in indefinite
form ended by ``00 00``. Every BER decoder joins the segments (pyasn1's ``encoder.encode(v, maxChunkSize=8,
defMode=False)`` writes exactly this; CER, X.690 §9.2, *requires* segments of 1,000 bytes for longer strings).
So ``mining.subscribe`` is ``2c 80 04 08 "mining.s" 04 08 "ubscribe" 00 00``: no segment holds a whole name.

Schema (the miner's call and the pool's answer, both SEQUENCEs in indefinite form)::

    Call   ::= SEQUENCE { id INTEGER, method UTF8String, params SEQUENCE OF UTF8String }
    Answer ::= SEQUENCE { id INTEGER, result BOOLEAN, notify UTF8String OPTIONAL }

Modes: ``seg8`` (segments of 8 bytes, pyasn1's ``maxChunkSize=8``), ``seg1`` (segments of one byte), ``definite``
(segments of 4 bytes, every length in definite form, pyasn1's default ``defMode=True``). The pool logs ``share
accepted`` for each submit it answered; the miner prints ``share answered`` when the submit's answer came.
"""

from __future__ import annotations

from tests.security import redteam_wire as wire

SEGMENTS = {"seg8": 8, "seg1": 1, "definite": 4}


def _length(size: int) -> bytes:
    if size < 0x80:
        return bytes([size])
    raw = size.to_bytes((size.bit_length() + 7) // 8)
    return bytes([0x80 | len(raw)]) + raw


def _tlv(tag: int, content: bytes, definite: bool) -> bytes:
    """A constructed value: ``tag``, then ``content`` in definite or indefinite form."""
    if definite:
        return bytes([tag]) + _length(len(content)) + content
    return bytes([tag, 0x80]) + content + b"\x00\x00"


def utf8(text: str, segment: int, definite: bool) -> bytes:
    """A UTF8String in constructed form: OCTET STRING segments of ``segment`` bytes."""
    raw = text.encode()
    parts = b"".join(
        b"\x04" + _length(len(raw[i : i + segment])) + raw[i : i + segment] for i in range(0, len(raw), segment)
    )
    return _tlv(0x2C, parts, definite)


def integer(value: int) -> bytes:
    return b"\x02\x01" + bytes([value])


def call(ident: int, method: str, params: list[str], mode: str) -> bytes:
    segment, definite = SEGMENTS[mode], mode == "definite"
    listed = _tlv(0x30, b"".join(utf8(p, segment, definite) for p in params), definite)
    return _tlv(0x30, integer(ident) + utf8(method, segment, definite) + listed, definite)


def answer(ident: int, notify: str | None, mode: str) -> bytes:
    segment, definite = SEGMENTS[mode], mode == "definite"
    extra = utf8(notify, segment, definite) if notify else b""
    return _tlv(0x30, integer(ident) + b"\x01\x01\xff" + extra, definite)


def _need(data: bytes, end: int) -> None:
    if end > len(data):
        raise wire.Short


def decode(data: bytes, at: int = 0) -> tuple[object, int]:
    """One BER value from ``data`` at ``at`` (INTEGER, BOOLEAN, OCTET STRING/UTF8String primitive or constructed,
    SEQUENCE; definite or indefinite) and where the next starts; `Short` when cut. ``None`` for end-of-contents."""
    _need(data, at + 2)
    tag, first = data[at], data[at + 1]
    at += 2
    if tag == 0 and first == 0:
        return None, at
    size = -1
    if first < 0x80:
        size = first
    elif first > 0x80:
        width = first & 0x7F
        _need(data, at + width)
        size, at = int.from_bytes(data[at : at + width]), at + width
    if tag & 0x20:  # constructed: a SEQUENCE, or a string's segments
        items: list[object] = []
        end = at + size if size >= 0 else -1
        while end < 0 or at < end:
            item, at = decode(data, at)
            if item is None and end < 0:
                break
            items.append(item)
        if tag in (0x24, 0x2C):
            return "".join(str(item) for item in items), at
        return items, at
    _need(data, at + size)
    content = data[at : at + size]
    at += size
    if tag == 0x02:
        return int.from_bytes(content, signed=True), at
    if tag == 0x01:
        return content != b"\x00", at
    return content.decode(), at


def _mode(buf: bytes) -> str:
    """The answer's mode: definite if the call was (its second byte is a length), else ``seg8``/``seg1`` alike
    (the decoder reads any segment size; the pool answers with segments of 8)."""
    return "definite" if buf[1] != 0x80 else "seg8"


def _take(buf: bytes) -> tuple[object, int]:
    """The pool's next call and the mode to answer it in."""
    message, at = decode(buf)
    return (message, _mode(buf)), at


def _answer(taken: object) -> tuple[bytes, bool]:
    assert isinstance(taken, tuple)
    message, mode = taken
    assert isinstance(message, list), message
    ident, method = message[0], message[1]
    assert isinstance(ident, int)
    print(f"pool got {method} ({mode})", flush=True)
    notify = "mining.notify" if method == "mining.subscribe" else None
    return answer(ident, notify, mode), method == "mining.submit"


def pool_main() -> None:
    """``python -c '...pool_main()' ADDRESS:PORT...``"""
    wire.serve_pools(lambda conn: wire.serve_frames(conn, _take, _answer))


def miner_main() -> None:
    """``python -c '...miner_main()' ADDRESS|- PORT HOST MODE``"""
    address, port, _host, (mode,) = wire.miner_argv()
    calls = [(call(ident, method, params, mode), _shared) for ident, method, params in wire.STRATUM_CALLS]
    wire.frames_miner(address, port, calls, decode, nodelay=True)


def _shared(got: object) -> bool:
    return isinstance(got, list) and got[:2] == [wire.SUBMIT_ID, True]
