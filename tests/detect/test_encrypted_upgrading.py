"""`egress.detect.encrypted.detect_upgrading`: a host rule's stream judged at its opening up to where TLS begins in
band (STARTTLS, PostgreSQL's SSLRequest). A post-quantum ClientHello (an X25519MLKEM768 key share: 1,216 random
bytes) in the window made `detect` call the upgrade a fully encrypted stream."""

from __future__ import annotations

import random

import pytest

from egress.detect import encrypted, tls
from egress.detect.base import Finding, FlowMeta, FlowView, Transport
from tests.proxy.test_front import _client_hello

META = FlowMeta(Transport.TCP, "10.0.0.5", 40000, "192.0.2.1", 5432)
KEY_SHARE = 0x0033
X25519MLKEM768 = 0x11EC


def _post_quantum_hello(name: str) -> bytes:
    """A real ClientHello for ``name`` whose key share is X25519MLKEM768's (1,216 bytes, as OpenSSL 3.5, Go 1.24
    and Chrome send first) and x25519's, in one record."""
    hello = _client_hello(name)
    body = hello[9:]
    at = 2 + 32
    at += 1 + body[at]
    at += 2 + int.from_bytes(body[at : at + 2])
    at += 1 + body[at]
    rest, extensions = body[at + 2 :], b""
    rng = random.Random(7)
    while rest:
        kind, size = int.from_bytes(rest[:2]), int.from_bytes(rest[2:4])
        data, rest = rest[4 : 4 + size], rest[4 + size :]
        if kind == KEY_SHARE:
            shares = X25519MLKEM768.to_bytes(2) + (1216).to_bytes(2) + rng.randbytes(1216)
            shares += (0x001D).to_bytes(2) + (32).to_bytes(2) + rng.randbytes(32)
            data = len(shares).to_bytes(2) + shares
        extensions += kind.to_bytes(2) + len(data).to_bytes(2) + data
    message = body[:at] + len(extensions).to_bytes(2) + extensions
    message = b"\x01" + len(message).to_bytes(3) + message
    return b"\x16\x03\x01" + len(message).to_bytes(2) + message


PQ_HELLO = _post_quantum_hello("db.example.com")
RANDOM = random.Random(3).randbytes(2000)
SSL_REQUEST = bytes.fromhex("0000000804d2162f")


def test_the_post_quantum_hello_parses_whole_and_its_window_looks_random() -> None:
    """The premise: a window that holds it is judged fully encrypted by `detect`."""
    hello = tls.parse_client_hello(PQ_HELLO)
    assert isinstance(hello, tls.ClientHello) and hello.sni == "db.example.com"
    view = FlowView(META, b"STARTTLS\r\n" + PQ_HELLO + RANDOM[:500])
    assert isinstance(encrypted.detect(view), Finding)


@pytest.mark.parametrize("opening", [b"STARTTLS\r\n", SSL_REQUEST, b"EHLO x\r\nSTARTTLS\r\n"])
@pytest.mark.parametrize("cut", [len(PQ_HELLO), 1448, 600])
def test_a_plain_opening_then_a_post_quantum_hello_passes(opening: bytes, cut: int) -> None:
    """Whole or still arriving (``cut``: the hello's bytes so far), the hello ends the judged opening."""
    view = FlowView(META, opening + PQ_HELLO[:cut] + (RANDOM[:500] if cut == len(PQ_HELLO) else b""))
    assert encrypted.detect_upgrading(view) is None


@pytest.mark.parametrize(
    "client",
    [
        b"hi\n" + RANDOM[:600],  # a short plain opening, then ciphertext: as `detect`
        RANDOM[:100] + PQ_HELLO,  # random bytes before the hello: the opening itself is judged
        RANDOM[:600],
    ],
    ids=["hi-then-random", "random-then-hello", "random"],
)
def test_an_opening_that_is_no_protocol_is_still_a_tunnel(client: bytes) -> None:
    found = encrypted.detect_upgrading(FlowView(META, client))
    assert isinstance(found, Finding) and found.protocol == encrypted.PROTOCOL


def test_a_record_header_that_is_no_hello_does_not_end_the_opening() -> None:
    """``16 03`` inside the random bytes, not a ClientHello: judged on the whole window."""
    client = b"hi\n" + b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00" + RANDOM[:600]
    found = encrypted.detect_upgrading(FlowView(META, client))
    assert isinstance(found, Finding) and found.protocol == encrypted.PROTOCOL
