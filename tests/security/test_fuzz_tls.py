"""Fuzzing the TLS ClientHello parser (egress/detect/tls.py), which reads attacker bytes for the gate, the name and
Tor detectors and the proxy front.

Generated hellos are well formed by construction (random SNI, ALPN, cipher suites, GREASE and unknown extensions,
the handshake split over several records at random points): the parser must read back exactly what was built,
answer `MORE` for every strict prefix, and ignore what follows the hello. Mutated hellos (flips, cuts,
insertions) must only ever give a hello, None or MORE. tests/detect/test_tls.py has the fixture-based tests and
a random-bytes run; these reach the deep fields random bytes never get to.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress.detect import tls
from egress.detect.base import MORE
from tests.budget import examples
from tests.security.fuzzing import counted

pytestmark = [pytest.mark.fuzz, pytest.mark.usefixtures("fuzz_rows")]

labels = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
hostnames = st.lists(labels, min_size=1, max_size=5).map(".".join)
alpns = st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/.", min_size=1, max_size=12), max_size=4)
suites = st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=40)
_KNOWN = (tls.EXT_SERVER_NAME, tls.EXT_ALPN, tls.EXT_SUPPORTED_VERSIONS)
others = st.lists(
    st.tuples(st.integers(0, 0xFFFF).filter(lambda kind: kind not in _KNOWN), st.binary(max_size=40)), max_size=6
)


def _vec8(data: bytes) -> bytes:
    return bytes([len(data)]) + data


def _vec16(data: bytes) -> bytes:
    return len(data).to_bytes(2) + data


def _ext(kind: int, body: bytes) -> bytes:
    return kind.to_bytes(2) + _vec16(body)


def hello_body(sni: str | None, alpn: list[str], ciphers: list[int], extra: list[tuple[int, bytes]]) -> bytes:
    extensions = [_ext(kind, body) for kind, body in extra]
    if sni is not None:
        extensions.insert(0, _ext(tls.EXT_SERVER_NAME, _vec16(b"\x00" + _vec16(sni.encode()))))
    if alpn:
        extensions.append(_ext(tls.EXT_ALPN, _vec16(b"".join(_vec8(p.encode()) for p in alpn))))
    extensions.append(_ext(tls.EXT_SUPPORTED_VERSIONS, _vec8(b"\x03\x04\x03\x03")))
    body = b"\x03\x03" + bytes(32) + _vec8(bytes(32)) + _vec16(b"".join(c.to_bytes(2) for c in ciphers)) + b"\x01\x00"
    return body + _vec16(b"".join(extensions))


def records(message: bytes, cuts: list[int]) -> bytes:
    """The handshake message in one record per piece between ``cuts`` (a hello may span records, RFC 8446 §5.1)."""
    points = sorted({0, len(message), *(cut % (len(message) + 1) for cut in cuts)})
    pieces = [message[a:b] for a, b in itertools.pairwise(points)]
    return b"".join(b"\x16\x03\x01" + len(piece).to_bytes(2) + piece for piece in pieces)


@st.composite
def hellos(draw: st.DrawFn) -> tuple[bytes, str | None, list[str], list[int], list[tuple[int, bytes]]]:
    sni = draw(st.none() | hostnames)
    alpn, ciphers, extra = draw(alpns), draw(suites), draw(others)
    body = hello_body(sni, alpn, ciphers, extra)
    message = bytes([tls.CLIENT_HELLO]) + len(body).to_bytes(3) + body
    return records(message, draw(st.lists(st.integers(0, 1 << 16), max_size=4))), sni, alpn, ciphers, extra


@settings(max_examples=examples(300), deadline=None)
@given(hellos(), st.binary(max_size=64))
@counted("tls.parse_client_hello (generated)")
def test_a_generated_hello_reads_back_exactly(
    built: tuple[bytes, str | None, list[str], list[int], list[tuple[int, bytes]]], after: bytes
) -> None:
    data, sni, alpn, ciphers, extra = built
    for stream in (data, data + b"\x17\x03\x03" + _vec16(after)):  # an application-data record after it
        hello = tls.parse_client_hello(stream)
        assert isinstance(hello, tls.ClientHello), hello
        assert hello.sni == sni
        assert hello.alpn == tuple(alpn)
        assert hello.cipher_suites == tuple(ciphers)
        assert tls.TLS13 in hello.supported_versions
        assert [kind for kind, _ in extra] == [k for k in hello.extensions if k not in _KNOWN]
        assert not hello.truncated


@settings(max_examples=examples(100), deadline=None)
@given(hellos(), st.data())
@counted("tls.parse_client_hello (prefixes)")
def test_every_strict_prefix_asks_for_more(
    built: tuple[bytes, str | None, list[str], list[int], list[tuple[int, bytes]]], data: st.DataObject
) -> None:
    whole = built[0]
    cut = data.draw(st.integers(0, len(whole) - 1))
    assert tls.parse_client_hello(whole[:cut]) is MORE
    partial = tls.parse_client_hello(whole[:cut], partial=True)
    assert partial is None or partial is MORE or isinstance(partial, tls.ClientHello)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(hellos())[0])
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        match draw(st.sampled_from(("flip", "insert", "delete", "cut", "length"))):
            case "flip" if data:
                data[at] ^= 1 << draw(st.integers(0, 7))
            case "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=8))
            case "delete" if data:
                del data[at : at + draw(st.integers(1, 8))]
            case "cut":
                del data[at:]
            case "length" if len(data) > at + 1:  # a length field set to an extreme
                data[at : at + 2] = draw(st.sampled_from((b"\x00\x00", b"\xff\xff", b"\x40\x00", b"\x00\x01")))
            case _:
                pass
    return bytes(data)


@settings(max_examples=examples(500), deadline=None)
@given(mutated(), st.booleans())
@counted("tls.parse_client_hello (mutated)")
def test_a_mutated_hello_gives_a_hello_none_or_more(data: bytes, partial: bool) -> None:
    hello = tls.parse_client_hello(data, partial)
    assert hello is None or hello is MORE or isinstance(hello, tls.ClientHello), hello
    if isinstance(hello, tls.ClientHello):
        assert hello.sni is None or isinstance(hello.sni, str)
    server = tls.parse_server_hello(data, partial)
    assert server is None or server is MORE or isinstance(server, tls.ServerHello)
