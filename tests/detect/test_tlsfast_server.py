"""_tlsfast.c's ServerHello parse against its pure twin (`tls._parse_server_hello`), the one the relay's shape
watcher runs on each connection's first server bytes (`TlsShape._server_hello`): the same answer (the same frozen
`ServerHello`, None or MORE) for OpenSSL's real server flights (TLS 1.3; TLS 1.2 with ECDHE-GCM, ChaCha20 and CBC
suites, whose Certificate message the parse reads), every truncation and record split of them, mutated copies and
random bytes behind handshake headers, both ``partial``s."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import pathlib
import random
import ssl

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress.detect import tls, tlsfast
from egress.detect.base import MORE
from egress.lab import certs
from egress.proxy.relay import Watch
from tests.budget import examples
from tests.detect import test_tls
from tests.detect import tlsshape_traces as traces
from tests.detect.test_tlsfast import _real_hellos, compiled_only


def _compiled(prefix: bytes | bytearray | memoryview, partial: bool) -> object:
    assert tlsfast.COMPILED is not None
    return tlsfast.COMPILED.server_hello(prefix, partial, MORE, tls.ServerHello)


def _same(prefix: bytes) -> object:
    want: object = None
    for partial in (False, True):
        want = tls._parse_server_hello(prefix, partial)
        got = _compiled(prefix, partial)
        assert got == want and type(got) is type(want), (prefix.hex(), partial, got, want)
    return want


def _flight(directory: pathlib.Path, tls12: bool, ciphers: str | None) -> bytes:
    """The server's first flight of an in-memory OpenSSL handshake (the lab's pool certificate)."""
    files = certs.ensure(directory)
    chain, key = files.servers["pool"]
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(chain, key)
    server.set_ciphers("ALL:@SECLEVEL=0")  # the CBC suite too
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    if tls12:
        client.maximum_version = ssl.TLSVersion.TLSv1_2
    if ciphers is not None:
        client.set_ciphers(ciphers)
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client_side = client.wrap_bio(c_in, c_out)
    server_side = server.wrap_bio(s_in, s_out, server_side=True)
    with contextlib.suppress(ssl.SSLWantReadError):
        client_side.do_handshake()
    s_in.write(c_out.read())
    with contextlib.suppress(ssl.SSLWantReadError):
        server_side.do_handshake()
    return s_out.read()


@functools.cache
def _flights(directory: pathlib.Path) -> tuple[bytes, ...]:
    made = [
        _flight(directory, False, None),
        _flight(directory, True, "ECDHE-ECDSA-AES128-GCM-SHA256"),
        _flight(directory, True, "ECDHE-ECDSA-CHACHA20-POLY1305"),
        _flight(directory, True, "ECDHE-ECDSA-AES128-SHA256:@SECLEVEL=0"),
        test_tls.TOR_SERVER_FLIGHT,
        bytes.fromhex(traces.HTTPS[0][0]),
    ]
    return tuple(made)


@pytest.fixture(scope="module")
def flights(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, ...]:
    return _flights(tmp_path_factory.mktemp("certs"))


def _split_records(flight: bytes, size: int) -> bytes:
    """``flight``'s leading handshake records' payloads cut again into records of at most ``size`` bytes, what
    follows them (ChangeCipherSpec, encrypted records) kept."""
    stream, offset = b"", 0
    while offset + 5 <= len(flight) and flight[offset] == tls.HANDSHAKE:
        length = int.from_bytes(flight[offset + 3 : offset + 5])
        stream += flight[offset + 5 : offset + 5 + length]
        offset += 5 + length
    cut = [stream[i : i + size] for i in range(0, len(stream), size)]
    return b"".join(b"\x16\x03\x03" + len(piece).to_bytes(2) + piece for piece in cut) + flight[offset:]


@compiled_only
def test_real_flights_parse_the_same_whole_truncated_and_split_into_records(flights: tuple[bytes, ...]) -> None:
    versions, chains = set(), 0
    for flight in flights:
        whole = _same(flight)
        assert isinstance(whole, tls.ServerHello)
        versions.add(whole.version)
        chains += bool(whole.certificates)
        for size in (1, 2, 3, 5, 17, 100, 1000):
            _same(_split_records(flight, size))
        for cut in range(len(flight) + 1):
            _same(flight[:cut])
    assert {0x0303, 0x0304} <= versions and chains >= 3  # TLS 1.2 flights whose certificates were read


@compiled_only
def test_mutated_flights_parse_the_same(flights: tuple[bytes, ...]) -> None:
    """Bytes changed in every field's reach: the message and certificate lengths overrunning or short, the
    extension block cut, supported_versions of other lengths, record headers of other types."""
    rng = random.Random(3)
    answers = {"hello": 0, "none": 0, "more": 0}
    for _ in range(examples(30_000)):
        flight = bytearray(rng.choice(flights))
        reach = min(len(flight), 3000) if rng.random() < 0.8 else len(flight)
        for _ in range(rng.randrange(1, 5)):
            at = rng.randrange(reach)
            flight[at] = rng.choice((0, 1, 2, 3, 4, 0x0B, 0x16, 0x2B, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        cut = rng.randrange(len(flight) + 1) if rng.random() < 0.5 else len(flight)
        got = _same(bytes(flight[:cut]))
        answers["more" if got is MORE else "none" if got is None else "hello"] += 1
    assert min(answers.values()) > examples(30_000) // 1000, answers  # each kind of answer is compared


@compiled_only
@settings(max_examples=examples(500), deadline=None)
@given(st.binary(max_size=64), st.binary(max_size=300), st.binary(max_size=200))
def test_random_bytes_behind_handshake_headers_parse_the_same(head: bytes, tail: bytes, cert: bytes) -> None:
    _same(head + tail)
    _same(b"\x16\x03\x01" + len(tail).to_bytes(2) + tail)
    hello = b"\x02" + len(tail).to_bytes(3) + tail
    _same(b"\x16\x03\x03" + len(hello).to_bytes(2) + hello)
    certificate = b"\x0b" + len(cert).to_bytes(3) + cert
    _same(b"\x16\x03\x03" + (len(hello) + len(certificate)).to_bytes(2) + hello + certificate)


@compiled_only
def test_other_buffers_and_bad_arguments(flights: tuple[bytes, ...]) -> None:
    flight = flights[1]
    assert _compiled(bytearray(flight), False) == tls._parse_server_hello(flight, False)
    assert _compiled(memoryview(flight)[:90], True) == tls._parse_server_hello(flight[:90], True)
    assert tlsfast.COMPILED is not None
    with pytest.raises(TypeError):
        tlsfast.COMPILED.server_hello("text", False, MORE, tls.ServerHello)
    with pytest.raises(TypeError):
        tlsfast.COMPILED.server_hello(flight, False)


@compiled_only
def test_the_watcher_and_the_gate_parse_with_the_compiled_twin(flights: tuple[bytes, ...]) -> None:
    """`tls.parse_server_hello` (the shape watcher's and the gate's) runs the compiled parse where it is built."""
    assert tls._fast_server_hello is tlsfast.COMPILED.server_hello  # type: ignore[union-attr]
    flight = bytes(flights[0])
    assert tls.parse_server_hello(flight) == tls._parse_server_hello(flight, False)


@compiled_only
def test_the_hellos_are_made_as_their_classes_init_makes_them(flights: tuple[bytes, ...]) -> None:
    """The compiled parses fill the frozen dataclasses' slots without their ``__init__``: the objects are equal
    field by field to those ``__init__`` makes, hash alike and stay frozen; a class whose fields are not slots (or
    any other callable) is called with the fields instead."""
    assert tlsfast.COMPILED is not None
    flight = flights[1]
    made = _compiled(flight, False)
    want = tls._parse_server_hello(flight, False)
    assert isinstance(made, tls.ServerHello) and isinstance(want, tls.ServerHello)
    assert [getattr(made, f) for f in made.__slots__] == [getattr(want, f) for f in want.__slots__]
    assert hash(made) == hash(want)
    with pytest.raises(AttributeError):
        made.version = 1  # type: ignore[misc]
    hello = _real_hellos()[0]
    client = tlsfast.COMPILED.client_hello(hello, False, MORE, tls.ClientHello)
    assert client == tls._parse_client_hello(hello, False) and hash(client) == hash(
        tls._parse_client_hello(hello, False)
    )
    assert tlsfast.COMPILED.server_hello(flight, False, MORE, lambda *fields: fields) == (
        want.version,
        want.cipher_suite,
        want.extensions,
        want.certificates,
    )

    @dataclasses.dataclass(frozen=True)
    class Plain:
        version: int
        cipher_suite: int
        extensions: tuple[int, ...]
        certificates: tuple[bytes, ...]

    assert tlsfast.COMPILED.server_hello(flight, False, MORE, Plain) == Plain(
        want.version, want.cipher_suite, want.extensions, want.certificates
    )
    assert _compiled(flight, False) == want  # and the dataclass's slots again after another class


def test_an_error_in_the_server_hellos_parse_closes_the_relay(
    monkeypatch: pytest.MonkeyPatch, flights: tuple[bytes, ...]
) -> None:
    """Fail closed: whatever the compiled ServerHello parse raises (MemoryError where Python would), the relay's
    watch refuses the server's first chunk, stays closed and passes nothing after."""

    def broken(prefix: bytes, partial: bool, more: object, make: object) -> object:
        raise MemoryError

    monkeypatch.setattr(tls, "_fast_server_hello", broken)
    watch = Watch(on_finding=lambda finding: False)
    assert watch.passes(True, _real_hellos()[0])
    # a new object: `parse_server_hello` keeps its last answer by the prefix's identity, and another test (any
    # order) may have parsed this very object already
    assert not watch.passes(False, bytes(bytearray(flights[0])))
    assert watch.closed and not watch.finished
    assert not watch.passes(True, b"\x17\x03\x03\x00\x01\x00")
