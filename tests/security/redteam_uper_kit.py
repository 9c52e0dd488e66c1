"""Programs of test_redteam_uper: Stratum's calls in ASN.1 unaligned PER (X.691, ``UNALIGNED`` variant), a fake
pool that reads it, and the miner in the sandbox. Fake both: no real mining software; the encoder and decoder
are written here (bit for bit what asn1tools' ``compile_files(..., 'uper')`` writes for this schema) so the suite
needs no package.

X.691 §30.5.2-30.5.4: an ``IA5String`` (a known-multiplier character string of 128 characters) is encoded with
``b = 7`` bits per character in the unaligned variant, after its length determinant, with no octet alignment
anywhere. So ``mining.subscribe`` is 16 characters in 112 bits: not one byte of it is the ASCII letter.

Schema::

    Call   ::= SEQUENCE { id INTEGER (0..255), method IA5String, params SEQUENCE OF IA5String }
    Answer ::= SEQUENCE { id INTEGER (0..255), result BOOLEAN, notify IA5String OPTIONAL }

Variants of the schema (red team 6's rows past the packed-name reader, `egress.detect.packed`): the strings
constrained to a permitted alphabet (X.691 §30.5.4: ``b`` bits a character, the index in the sorted alphabet
when its largest character needs more): ``six`` (`ALPHABET6`, 39 characters, 6 bits, every string), ``five``
(`ALPHABET5`, 28 characters, 5 bits, the method and the notification); ``offset``: a ``BIT STRING (SIZE (3))``
of flags first, so every string starts 3 bits further. The pool reads each PDU by the first schema under which
its method is a pool method.

On the stream each PDU is preceded by its length (PER is not self-delimiting: the transport frames it, as TPKT
or a length field does): in two big-endian bytes (framing ``binary``), or as five decimal digits and ``:``
(framing ``text``, a printable opening: not the "fully encrypted" shape of `egress.detect.encrypted`).
The pool logs ``share accepted`` for each submit it
answered; the miner prints ``share answered`` when the submit's answer came.
"""

from __future__ import annotations

import socket
import sys
import zlib

from tests.security.redteam_kit import serve_pools

SUBMIT_ID = 3
_CALLS: list[tuple[int, str, list[str]]] = [
    (1, "mining.subscribe", ["cpuminer/2.5.1"]),
    (2, "mining.authorize", ["wallet.worker", "x"]),
    (SUBMIT_ID, "mining.submit", ["wallet.worker", "job1", "00000000", "5f5e1000", "1a2b3c4d"]),
]


class Short(Exception):
    """More bytes are needed."""


class _Bits:
    """A bit string written most significant bit first."""

    def __init__(self) -> None:
        self.bits: list[int] = []

    def put(self, value: int, width: int) -> None:
        self.bits.extend((value >> (width - 1 - i)) & 1 for i in range(width))

    def length(self, size: int) -> None:  # X.691 §11.9.3.6: a general length under 128, 8 bits
        assert size < 128
        self.put(size, 8)

    def ia5(self, text: str, alphabet: str = "") -> None:
        raw = text.encode("ascii")
        self.length(len(raw))
        for byte in raw:
            self.put(*_code(byte, alphabet))

    def pdu(self) -> bytes:
        bits = self.bits + [0] * (-len(self.bits) % 8)
        return bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))


ALPHABET6 = "./0123456789_abcdefghijklmnopqrstuvwxyz"
"""``IA5String (FROM ("." | "/" | "0".."9" | "_" | "a".."z"))``: 39 characters, 6 bits, each its index."""
ALPHABET5 = "._abcdefghijklmnopqrstuvwxyz"
"""``IA5String (FROM ("." | "_" | "a".."z"))``: 28 characters, 5 bits, each its index."""
SCHEMAS: dict[str, tuple[str, str, int]] = {"ia5": ("", "", 0), "six": (ALPHABET6, ALPHABET6, 0),
                                            "five": (ALPHABET5, "", 0), "offset": ("", "", 3)}  # fmt: skip
"""Schema → (the method's and notification's permitted alphabet, the parameters', flag bits before the id)."""


def _code(byte: int, alphabet: str) -> tuple[int, int]:
    """(value, bits) of one character (X.691 §30.5.4): 7 bits of its code, or its index in ``alphabet``."""
    if not alphabet:
        return byte, 7
    return alphabet.index(chr(byte)), (len(alphabet) - 1).bit_length()


class _Reader:
    def __init__(self, body: bytes) -> None:
        self.value, self.left = int.from_bytes(body), len(body) * 8

    def get(self, width: int) -> int:
        self.left -= width
        if self.left < 0:
            raise ValueError("PDU too short")
        return (self.value >> self.left) & ((1 << width) - 1)

    def ia5(self, alphabet: str = "") -> str:
        if not alphabet:
            return bytes(self.get(7) for _ in range(self.get(8))).decode("ascii")
        width = (len(alphabet) - 1).bit_length()
        return "".join(alphabet[self.get(width)] for _ in range(self.get(8)))


def framed(body: bytes, framing: str) -> bytes:
    return (b"%05d:" % len(body) if framing == "text" else len(body).to_bytes(2)) + body


def call(ident: int, method: str, params: list[str], schema: str = "ia5") -> bytes:
    names, values, flags = SCHEMAS[schema]
    bits = _Bits()
    bits.put(0b101 if flags else 0, flags)
    bits.put(ident, 8)
    bits.ia5(method, names)
    bits.length(len(params))
    for param in params:
        bits.ia5(param, values)
    return bits.pdu()


def answer(ident: int, notify: str | None, schema: str = "ia5") -> bytes:
    bits = _Bits()
    bits.put(1 if notify else 0, 1)  # the preamble: notify present
    bits.put(ident, 8)
    bits.put(1, 1)  # result TRUE
    if notify:
        bits.ia5(notify, SCHEMAS[schema][0])
    return bits.pdu()


def _pdu(buf: bytes, framing: str) -> tuple[bytes, bytes]:
    """The first length-framed PDU of ``buf`` and what follows it; `Short` when cut."""
    head = 6 if framing == "text" else 2
    if len(buf) < head:
        raise Short
    end = head + (int(buf[:5]) if framing == "text" else int.from_bytes(buf[:2]))
    if len(buf) < end:
        raise Short
    return buf[head:end], buf[end:]


METHODS = frozenset(method for _, method, _ in _CALLS)


def read_call(body: bytes, schema: str = "ia5") -> tuple[int, str, list[str]]:
    names, values, flags = SCHEMAS[schema]
    reader = _Reader(body)
    reader.get(flags)
    ident, method = reader.get(8), reader.ia5(names)
    return ident, method, [reader.ia5(values) for _ in range(reader.get(8))]


def read_any_call(body: bytes) -> tuple[str, int, str]:
    """(schema, id, method) of the first schema under which ``body`` is a pool call."""
    for schema in SCHEMAS:
        try:
            ident, method, _params = read_call(body, schema)
        except (ValueError, IndexError, UnicodeDecodeError):
            continue
        if method in METHODS:
            return schema, ident, method
    raise ValueError(f"no schema reads {body.hex()}")


def read_answer(body: bytes, schema: str = "ia5") -> tuple[int, bool, str | None]:
    reader = _Reader(body)
    present = reader.get(1)
    ident, result = reader.get(8), bool(reader.get(1))
    return ident, result, reader.ia5(SCHEMAS[schema][0]) if present else None


HTTP_PREFIX = b"GET /per HTTP/1.1\r\n"
"""Variant ``http-prefix``: a request line, then the PDUs (no head ever ends)."""
TEXT_PREFIX = b"HELLO uper-client/1.0 " + b"x" * 640 + b"\n"
"""Variant ``text-prefix``: a printable line (more than half of the opening's 1,024-byte window), then the PDUs."""
NOTE = b"NOTE calls are logged for the operator; nothing to see here\n"
"""Variant ``interleaved``: a printable line before every PDU (the pool skips lines that start ``NOTE``)."""
KEEPALIVE = b"GET / HTTP/1.1\r\nHost: allowed.lab\r\n\r\n"
"""Variant ``keepalive``: a whole request, answered, then the PDUs on the same connection."""
DEFLATE = b"permessage-deflate; client_no_context_takeover; server_no_context_takeover"
"""The compression the ``ws-deflate`` variant offers (RFC 7692), each message compressed alone."""
UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: allowed.lab\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
"""Variant ``websocket``: an upgrade (RFC 6455's sample key), then each PDU in a binary frame."""
_UPGRADED = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
)
_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
VARIANTS: dict[str, tuple[str, str, str]] = {
    "plain": ("plain", "ia5", "whole"),
    "tls-prefix": ("tls-prefix", "ia5", "whole"),
    "http-prefix": ("http-prefix", "ia5", "whole"),
    "text-prefix": ("text-prefix", "ia5", "whole"),
    "keepalive": ("keepalive", "ia5", "whole"),
    "websocket": ("websocket", "ia5", "frame"),
    "six": ("text-prefix", "six", "whole"),
    "five": ("text-prefix", "five", "whole"),
    "offset": ("text-prefix", "offset", "whole"),
    "interleaved": ("text-prefix", "ia5", "noted"),
    "ws-six": ("websocket", "six", "frame"),
    "ws-fragments": ("websocket", "ia5", "fragments"),
    "ws-messages": ("websocket", "ia5", "messages"),
    "ws-deflate": ("websocket-deflate", "ia5", "deflate"),
}
"""Variant → (the opening, the schema (`SCHEMAS`), how each PDU is sent): ``whole`` after the opening, ``noted``
after a `NOTE` line, in a binary WebSocket ``frame``, in two ``fragments`` of one message (a frame without FIN,
then a continuation), in two binary ``messages`` (each half a PDU), or ``deflate``-compressed in one message."""
_MASK = b"\x1f\x2e\x3d\x4c"


def ws_frame(payload: bytes, mask: bytes = b"", opcode: int = 2, fin: bool = True, rsv1: bool = False) -> bytes:
    """A frame (RFC 6455 §5.2), masked when ``mask`` (4 bytes) is given; payloads under 126 bytes."""
    assert len(payload) < 126
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if mask else payload
    head = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    return bytes([head, len(payload) | (0x80 if mask else 0)]) + mask + body


def deflated(payload: bytes) -> bytes:
    """A message's payload compressed alone (RFC 7692 §7.2.1: raw DEFLATE, the final empty block's tail cut)."""
    packer = zlib.compressobj(wbits=-15)
    data = packer.compress(payload) + packer.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


def _unframe(buf: bytes) -> tuple[bytes, bytes]:
    """The payload of the first WebSocket frame in ``buf`` (inflated when its RSV1 says compressed) and what
    follows; `Short` when cut."""
    if len(buf) < 2:
        raise Short
    size, masked = buf[1] & 0x7F, buf[1] & 0x80
    head = 2 + (4 if masked else 0)
    if size == 126:
        if len(buf) < 4:
            raise Short
        size, head = int.from_bytes(buf[2:4]), head + 2
    if size == 127 or len(buf) < head + size:
        raise Short
    mask, body = buf[head - 4 : head] if masked else b"", buf[head : head + size]
    payload = bytes(b ^ mask[i % 4] for i, b in enumerate(body)) if masked else body
    if buf[0] & 0x40:
        payload = zlib.decompressobj(wbits=-15).decompress(payload + b"\x00\x00\xff\xff")
    return payload, buf[head + size :]


def _opened(conn: socket.socket, buf: bytes) -> tuple[bytes, bool] | None:
    """``buf`` past a variant's opening (a record header, a request line, a printable line, a request answered),
    and whether it upgraded to WebSocket; None when no opening starts it (the PDUs do); `Short` when cut."""
    if buf[:1] == b"\x16":
        if len(buf) < 5:
            raise Short
        return buf[5:], False
    for prefix in (HTTP_PREFIX, TEXT_PREFIX):
        if buf[:6] == prefix[:6]:
            if len(buf) < len(prefix):
                raise Short
            return buf[len(prefix) :], False
    if not buf.startswith(b"GET "):
        return None
    if b"\r\n\r\n" not in buf:
        raise Short
    head, buf = buf.split(b"\r\n\r\n", 1)
    ws = b"upgrade: websocket" in head.lower()
    offered = b"permessage-deflate" in head.lower()
    accepted = b"Sec-WebSocket-Extensions: " + DEFLATE + b"\r\n\r\n"
    conn.sendall((_UPGRADED[:-2] + accepted if offered else _UPGRADED) if ws else _OK)
    return buf, ws


def _serve(conn: socket.socket) -> None:
    buf, inner, ws = b"", b"", False
    while data := conn.recv(4096):
        buf += data
        while buf and not ws:
            try:
                opened = _opened(conn, buf)
            except Short:
                break
            if opened is None:
                inner, buf = inner + buf, b""
            else:
                buf, ws = opened
        while buf and ws:
            try:
                payload, buf = _unframe(buf)
            except Short:
                break
            inner += payload
        while inner:
            if inner[:4] == NOTE[:4]:
                end = inner.find(b"\n")
                if end < 0:
                    break
                inner = inner[end + 1 :]
                continue
            framing = "text" if inner[:1].isdigit() else "binary"
            try:
                body, inner = _pdu(inner, framing)
            except Short:
                break
            schema, ident, method = read_any_call(body)
            print(f"pool got {method} ({schema})", flush=True)
            notify = "mining.notify" if method == "mining.subscribe" else None
            reply = framed(answer(ident, notify, schema), framing)
            conn.sendall(ws_frame(reply) if ws else reply)
            if method == "mining.submit":
                print("share accepted", flush=True)


def pool_main() -> None:
    """``python -c '...pool_main()' ADDRESS:PORT...``"""
    serve_pools(_serve)


def _opening(sock: socket.socket, opening: str, first: bytes) -> bytes:
    """What the miner sends before its first PDU (``first``, framed), by opening; the keep-alive request's answer
    and the upgrade's are read first."""
    if opening == "tls-prefix":
        return b"\x16\x03\x01" + len(first).to_bytes(2)
    if opening == "http-prefix":
        return HTTP_PREFIX
    if opening == "text-prefix":
        return TEXT_PREFIX
    if opening in ("keepalive", "websocket", "websocket-deflate"):
        offer = b"Sec-WebSocket-Extensions: " + DEFLATE + b"\r\n\r\n"
        sock.sendall({"keepalive": KEEPALIVE, "websocket": UPGRADE}.get(opening, UPGRADE[:-2] + offer))
        head = b""
        while not head.endswith(b"\r\n\r\nok" if opening == "keepalive" else b"\r\n\r\n"):
            piece = sock.recv(1)
            if not piece:
                raise ConnectionError(f"closed after {head!r}")
            head += piece
        print(f"opening answered {head.split(b'\r\n', 1)[0]!r}", flush=True)
    return b""


def _send(sock: socket.socket, wire: str, prefix: bytes, pdu: bytes) -> None:
    """One PDU as the variant sends it (`VARIANTS`), after ``prefix``; two halves go in two segments."""
    half = len(pdu) // 2
    if wire == "whole":
        sock.sendall(prefix + pdu)
    elif wire == "noted":
        sock.sendall(prefix + NOTE + pdu)
    elif wire == "frame":
        sock.sendall(ws_frame(pdu, _MASK))
    elif wire == "deflate":
        sock.sendall(ws_frame(deflated(pdu), _MASK, rsv1=True))
    else:
        fragments = wire == "fragments"
        sock.sendall(ws_frame(pdu[:half], _MASK, fin=not fragments))
        sock.sendall(ws_frame(pdu[half:], _MASK, opcode=0 if fragments else 2))


def miner_main() -> None:
    """``python -c '...miner_main()' FRAMING ADDRESS|- PORT HOST [VARIANT]``"""
    framing, address, port, host = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    opening, schema, wire = VARIANTS[sys.argv[5] if len(sys.argv) > 5 else "plain"]
    ws = opening.startswith("websocket")
    if address == "-":
        address = str(socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
    try:
        with socket.create_connection((address, port), timeout=15) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buf, inner = b"", b""
            for ident, method, params in _CALLS:
                pdu = framed(call(ident, method, params, schema), framing)
                prefix = _opening(sock, opening, pdu) if ident == _CALLS[0][0] else b""
                _send(sock, wire, prefix, pdu)
                while True:
                    try:
                        body, inner = _pdu(inner, framing)
                        break
                    except Short:
                        pass
                    if ws:
                        try:
                            payload, buf = _unframe(buf)
                            inner += payload
                            continue
                        except Short:
                            pass
                    data = sock.recv(4096)
                    if not data:
                        print("miner: closed", flush=True)
                        return
                    if ws:
                        buf += data
                    else:
                        inner += data
                got = read_answer(body, schema)
                print(f"answer {got!r}", flush=True)
                if got[:2] == (SUBMIT_ID, True):
                    print("share answered", flush=True)
    except OSError as exc:
        print(f"miner ended: {exc!r}", flush=True)
