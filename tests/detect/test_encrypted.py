"""Fully encrypted openings (egress.detect.encrypted): the Wu et al. / nDPI heuristic, without the exemptions an
attacker meets for free (a printable prefix, a printable run) and with TLS/HTTP exempt only when they are whole."""

from __future__ import annotations

import json
import random

import pytest

from egress.detect import encrypted
from egress.detect.encrypted import Opening, fully_encrypted, opening
from tests.detect.feeding import feed_every_split, feed_stream
from tests.proxy.test_front import _client_hello

RNG = random.Random(20231)


def _random(size: int) -> bytes:
    return RNG.randbytes(size)


def _openvpn_static_key_tcp(size: int) -> bytes:
    """OpenVPN ``--secret`` over TCP (openvpn src/openvpn/socket.h stream framing, crypto.c static-key packets): a
    2-byte length, then HMAC-SHA256 (32), IV (16) and AES-CBC ciphertext; no opcode, no handshake in the clear."""
    body = _random(32 + 16 + 16 * (size // 16 + 1))
    return len(body).to_bytes(2) + body


SHADOWSOCKS = _random(32 + 2 + 16 + 300 + 16)
"""An AEAD Shadowsocks first packet: salt, encrypted length and tag, encrypted payload and tag."""
STRATUM = json.dumps({"id": 1, "method": "mining.subscribe", "params": ["cpuminer/2.5"]}).encode() + b"\n"


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("shadowsocks", SHADOWSOCKS),
        ("openvpn-static-key", _openvpn_static_key_tcp(400)),
        ("six-printable-then-random", b"hello!" + _random(300)),  # GFW Ex2 would exempt it
        ("printable-run-then-random", b"x" * 25 + _random(300)),  # GFW Ex4 would exempt it
        ("tls-header-then-random", b"\x16\x03\x01\x01\x00" + _random(300)),  # GFW Ex5 would exempt it
        ("http-method-then-random", b"GET " + _random(300)),  # GFW Ex5 would exempt it
        ("tls-application-header-then-random", b"\x17\x03\x03\x01\x00" + _random(300)),
    ],
)
def test_encrypted_openings_are_found(name: str, data: bytes) -> None:
    assert opening(data) is Opening.ENCRYPTED
    found = feed_stream(encrypted.detect, data)
    assert found is not None and found.protocol == "unidentified-encrypted"
    assert {f.protocol if f else None for f in feed_every_split(encrypted.detect, data)} == {"unidentified-encrypted"}


@pytest.mark.parametrize(
    ("name", "data", "seen"),
    [
        ("tls", _client_hello("example.com"), Opening.TLS),
        ("http", b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", Opening.HTTP),
        ("ssh", b"SSH-2.0-OpenSSH_9.6\r\n", Opening.SSH),
        ("stratum", STRATUM, Opening.PLAIN),
        ("zeros", bytes(64), Opening.PLAIN),
        ("postgres-ssl-request", bytes.fromhex("0000000804d2162f"), Opening.PLAIN),
        ("mostly-printable", b"A" * 200 + _random(150), Opening.PLAIN),  # Ex3: base64 or padding passes (gap)
    ],
)
def test_other_openings_are_not_encrypted(name: str, data: bytes, seen: Opening) -> None:
    assert opening(data, ended=True) is seen
    assert feed_stream(encrypted.detect, data) is None


def test_a_short_random_opening_waits_then_is_judged_at_the_end() -> None:
    """A small first segment changes nothing: under 16 random-looking bytes the gate waits for more."""
    head = bytes.fromhex("5a3c96e1a7")  # 4.0 bits per byte, not printable
    assert fully_encrypted(head)
    assert opening(head) is None
    assert opening(head, ended=True) is Opening.ENCRYPTED


@pytest.mark.parametrize("prefix", [b"S", b"SSH-2", b"\x16\x03", b"GE", b"A", b"\x9c", b"hello"])
def test_a_protocol_prefix_waits(prefix: bytes) -> None:
    assert opening(prefix) is None


@pytest.mark.parametrize("short", [b"PING\r\n", bytes.fromhex("0000000804d2162f")])
def test_a_short_text_line_or_binary_header_is_judged_at_once(short: bytes) -> None:
    """Redis' PING, Postgres' SSLRequest: a client that says this little and waits must not hang."""
    assert opening(short) is Opening.PLAIN


def test_server_first_random_opening_is_found() -> None:
    found = feed_stream(encrypted.detect, b"", SHADOWSOCKS)
    assert found is not None and "server" in found.evidence


def test_random_data_is_found_almost_always() -> None:
    """Uniform random openings of 16-1024 bytes: Ex1 and Ex3 exempt few (the paper: about 0.6% of 1000-byte ones
    fail Ex1... by 16 bytes more do); the gate sees them in whole windows."""
    found = sum(opening(_random(512), ended=True) is Opening.ENCRYPTED for _ in range(1000))
    assert found >= 990
