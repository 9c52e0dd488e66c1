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

On the stream each PDU is preceded by its length (PER is not self-delimiting: the transport frames it, as TPKT
or a length field does): in two big-endian bytes (framing ``binary``), or as five decimal digits and ``:``
(framing ``text``, a printable opening: not the "fully encrypted" shape of `egress.detect.encrypted`).
The pool logs ``share accepted`` for each submit it
answered; the miner prints ``share answered`` when the submit's answer came.
"""

from __future__ import annotations

import socket
import sys

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

    def ia5(self, text: str) -> None:
        raw = text.encode("ascii")
        self.length(len(raw))
        for byte in raw:
            self.put(byte, 7)

    def pdu(self) -> bytes:
        bits = self.bits + [0] * (-len(self.bits) % 8)
        return bytes(int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits), 8))


class _Reader:
    def __init__(self, body: bytes) -> None:
        self.value, self.left = int.from_bytes(body), len(body) * 8

    def get(self, width: int) -> int:
        self.left -= width
        if self.left < 0:
            raise ValueError("PDU too short")
        return (self.value >> self.left) & ((1 << width) - 1)

    def ia5(self) -> str:
        return bytes(self.get(7) for _ in range(self.get(8))).decode("ascii")


def framed(body: bytes, framing: str) -> bytes:
    return (b"%05d:" % len(body) if framing == "text" else len(body).to_bytes(2)) + body


def call(ident: int, method: str, params: list[str]) -> bytes:
    bits = _Bits()
    bits.put(ident, 8)
    bits.ia5(method)
    bits.length(len(params))
    for param in params:
        bits.ia5(param)
    return bits.pdu()


def answer(ident: int, notify: str | None) -> bytes:
    bits = _Bits()
    bits.put(1 if notify else 0, 1)  # the preamble: notify present
    bits.put(ident, 8)
    bits.put(1, 1)  # result TRUE
    if notify:
        bits.ia5(notify)
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


def read_call(body: bytes) -> tuple[int, str, list[str]]:
    reader = _Reader(body)
    ident, method = reader.get(8), reader.ia5()
    return ident, method, [reader.ia5() for _ in range(reader.get(8))]


def read_answer(body: bytes) -> tuple[int, bool, str | None]:
    reader = _Reader(body)
    present = reader.get(1)
    ident, result = reader.get(8), bool(reader.get(1))
    return ident, result, reader.ia5() if present else None


HTTP_PREFIX = b"GET /per HTTP/1.1\r\n"
"""Variant ``http-prefix``: a request line, then the PDUs (no head ever ends)."""
TEXT_PREFIX = b"HELLO uper-client/1.0 " + b"x" * 640 + b"\n"
"""Variant ``text-prefix``: a printable line (more than half of the opening's 1,024-byte window), then the PDUs."""
KEEPALIVE = b"GET / HTTP/1.1\r\nHost: allowed.lab\r\n\r\n"
"""Variant ``keepalive``: a whole request, answered, then the PDUs on the same connection."""
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
VARIANTS = ("plain", "tls-prefix", "http-prefix", "text-prefix", "keepalive", "websocket")


def ws_frame(payload: bytes, mask: bytes = b"") -> bytes:
    """A final binary frame (RFC 6455 §5.2), masked when ``mask`` (4 bytes) is given; payloads under 126 bytes."""
    assert len(payload) < 126
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if mask else payload
    return bytes([0x82, len(payload) | (0x80 if mask else 0)]) + mask + body


def _unframe(buf: bytes) -> tuple[bytes, bytes]:
    """The payload of the first WebSocket frame in ``buf`` and what follows; `Short` when cut."""
    if len(buf) < 2:
        raise Short
    size, masked = buf[1] & 0x7F, buf[1] & 0x80
    head = 2 + (4 if masked else 0)
    if size >= 126 or len(buf) < head + size:
        raise Short
    mask, body = buf[2:head], buf[head : head + size]
    return (bytes(b ^ mask[i % 4] for i, b in enumerate(body)) if masked else body), buf[head + size :]


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
    conn.sendall(_UPGRADED if ws else _OK)
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
            framing = "text" if inner[:1].isdigit() else "binary"
            try:
                body, inner = _pdu(inner, framing)
            except Short:
                break
            ident, method, _params = read_call(body)
            print(f"pool got {method}", flush=True)
            reply = framed(answer(ident, "mining.notify" if method == "mining.subscribe" else None), framing)
            conn.sendall(ws_frame(reply) if ws else reply)
            if method == "mining.submit":
                print("share accepted", flush=True)


def pool_main() -> None:
    """``python -c '...pool_main()' ADDRESS:PORT...``"""
    serve_pools(_serve)


def _opening(sock: socket.socket, variant: str, first: bytes) -> bytes:
    """What the miner sends before its first PDU (``first``, framed), by variant; the keep-alive request's answer
    is read first."""
    if variant == "tls-prefix":
        return b"\x16\x03\x01" + len(first).to_bytes(2)
    if variant == "http-prefix":
        return HTTP_PREFIX
    if variant == "text-prefix":
        return TEXT_PREFIX
    if variant in ("keepalive", "websocket"):
        sock.sendall(KEEPALIVE if variant == "keepalive" else UPGRADE)
        head = b""
        while not head.endswith(b"\r\n\r\nok" if variant == "keepalive" else b"\r\n\r\n"):
            piece = sock.recv(1)
            if not piece:
                raise ConnectionError(f"closed after {head!r}")
            head += piece
        print(f"opening answered {head.split(b'\r\n', 1)[0]!r}", flush=True)
    return b""


def miner_main() -> None:
    """``python -c '...miner_main()' FRAMING ADDRESS|- PORT HOST [VARIANT]``"""
    framing, address, port, host = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    variant = sys.argv[5] if len(sys.argv) > 5 else "plain"
    if address == "-":
        address = str(socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
    try:
        with socket.create_connection((address, port), timeout=15) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            buf, inner = b"", b""
            for ident, method, params in _CALLS:
                pdu = framed(call(ident, method, params), framing)
                prefix = _opening(sock, variant, pdu) if ident == _CALLS[0][0] else b""
                sock.sendall(prefix + (ws_frame(pdu, b"\x1f\x2e\x3d\x4c") if variant == "websocket" else pdu))
                while True:
                    try:
                        body, inner = _pdu(inner, framing)
                        break
                    except Short:
                        pass
                    if variant == "websocket":
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
                    if variant == "websocket":
                        buf += data
                    else:
                        inner += data
                got = read_answer(body)
                print(f"answer {got!r}", flush=True)
                if got[:2] == (SUBMIT_ID, True):
                    print("share answered", flush=True)
    except OSError as exc:
        print(f"miner ended: {exc!r}", flush=True)
