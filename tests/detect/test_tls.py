"""Tests for egress.detect.tls: ClientHello/ServerHello parsing over record and segment boundaries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress.detect import tls
from egress.detect.base import MORE

# First record of the client side of flow 192.168.1.252:51176 -> 38.229.70.53:443 in tunnel/ndpi_tor.pcap.
TOR_CLIENT_HELLO = bytes.fromhex(
    "16030100cd010000c90301527b8138e543421c5fbd9e6a2a01453246e0b806f2821dcb9a44db082faa5058000048c00ac014008800870039"
    "0038c00fc00500840035c007c009c011c0130045004400330032c00cc00ec002c0040096004100040005002fc008c01200160013c00dc003"
    "feff000a00ff0100005800000014001200000f7777772e6a6d74733269642e636f6d000b000403000102000a003400320001000200030004"
    "00050006000700080009000a000b000c000d000e000f0010001100120013001400150016001700180019"
)
# First two records (ServerHello, Certificate) of the server side of the same flow.
TOR_SERVER_FLIGHT = bytes.fromhex(
    "16030100310200002d0301527b7333267a40a4f36911f94d05e413fb031f18df047d57c37d2089d421e14a000039000005ff010001001603"
    "0101cb0b0001c70001c40001c1308201bd30820126a003020102020842eed20eca03bc68300d06092a864886f70d01010505003021311f30"
    "1d060355040313167777772e6767353632697a6378647671646b2e636f6d301e170d3133303931353030303030305a170d31343032323132"
    "33353935395a3021311f301d060355040313167777772e66637379766e6c656d77787635702e6e657430819f300d06092a864886f70d0101"
    "01050003818d00308189028181009439fbd25a7f38bd40a78e1b59070cc0ecbd6a6ec645e97aa5395746ae73df5fba9ddd2bc25d3531b3bb"
    "74add82eebb6c1e0fda388fd10fd2c13c8de390cfdb5341f2689dc04e718c906af906a9045f7ced3a01d1670bbe4e74e68be7d9658398afa"
    "5ff3f54c06841bf26166cb40e064c4aca953cbb87c094ca32df2493848430203010001300d06092a864886f70d0101050500038181007336"
    "b23f7056d460bd549aeb8c9228a0687df969f83867a2cf3a5399c08523c2287918693d320aa9ea455ea0dac4f94c2b26e304e6819ebc23ba"
    "0c1f268baf0d0e4058cf0b98d2629c4f7b3192530ad25d922eb0317a90fc436dcd7a95b14f6ccca46be0a04a6e3a67310c617b20136287fb"
    "ab4db931e7af8fad74b8d8b84822"
)
# ClientHello to www.google.com offering only http/1.1, benign/ndpi_android.pcap.
ANDROID_GOOGLE_HELLO = bytes.fromhex(
    "16030100af010000ab0303455549a444262bb13003d12bfb73bf239baff8e6b5e0445b3dccf779b52a6b3000001cc02bc02ccca9c02fc030"
    "cca8c009c00ac013c014009c009d002f00350100006600000013001100000e7777772e676f6f676c652e636f6d00170000ff01000100000a"
    "00080006001d00170018000b00020100002300000010000b000908687474702f312e31000500050100000000000d00140012040308040401"
    "050308050501080606010201"
)


def _split_records(hello: bytes, size: int) -> bytes:
    """Re-frame one handshake record's payload into records of at most ``size`` bytes (RFC 8446 §5.1 allows it)."""
    payload = hello[5:]
    out = bytearray()
    for start in range(0, len(payload), size):
        chunk = payload[start : start + size]
        out += hello[:3] + len(chunk).to_bytes(2) + chunk
    return bytes(out)


def test_tor_client_hello_fields() -> None:
    hello = tls.parse_client_hello(TOR_CLIENT_HELLO)
    assert isinstance(hello, tls.ClientHello)
    assert hello.sni == "www.jmts2id.com"
    assert hello.alpn == ()
    assert hello.version == 0x0301
    assert hello.cipher_suite_count == 36
    assert hello.cipher_suites[:2] == (0xC00A, 0xC014)
    assert hello.extensions[0] == tls.EXT_SERVER_NAME
    assert not hello.truncated


def test_android_hello_alpn() -> None:
    hello = tls.parse_client_hello(ANDROID_GOOGLE_HELLO)
    assert isinstance(hello, tls.ClientHello)
    assert (hello.sni, hello.alpn) == ("www.google.com", ("http/1.1",))


@pytest.mark.parametrize("size", [1, 7, 64, 150])
def test_hello_fragmented_across_records(size: int) -> None:
    whole = tls.parse_client_hello(TOR_CLIENT_HELLO)
    assert tls.parse_client_hello(_split_records(TOR_CLIENT_HELLO, size)) == whole


def test_every_prefix_is_more_until_complete() -> None:
    for end in range(len(TOR_CLIENT_HELLO)):
        assert tls.parse_client_hello(TOR_CLIENT_HELLO[:end]) is MORE
    assert isinstance(tls.parse_client_hello(TOR_CLIENT_HELLO), tls.ClientHello)


def test_partial_parse_of_truncated_hello_keeps_sni() -> None:
    cut = TOR_CLIENT_HELLO[: TOR_CLIENT_HELLO.index(b"www.jmts2id.com") + 15]
    hello = tls.parse_client_hello(cut, partial=True)
    assert isinstance(hello, tls.ClientHello)
    assert hello.truncated
    assert hello.sni == "www.jmts2id.com"


def test_server_flight_certificate_names() -> None:
    answer = tls.parse_server_hello(TOR_SERVER_FLIGHT)
    assert isinstance(answer, tls.ServerHello)
    assert answer.version == 0x0301
    assert answer.cipher_suite == 0x0039
    assert len(answer.certificates) == 1
    assert tls.cert_names(answer.certificates[0]) == ("www.gg562izcxdvqdk.com", "www.fcsyvnlemwxv5p.net")


def test_server_flight_waits_for_certificate() -> None:
    first_record = 5 + int.from_bytes(TOR_SERVER_FLIGHT[3:5])
    assert tls.parse_server_hello(TOR_SERVER_FLIGHT[: first_record + 10]) is MORE


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"\x17\x03\x03\x00\x10" + bytes(16),
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",
        b"\x16\x09\x01",
    ],
)
def test_not_a_client_hello(data: bytes) -> None:
    assert tls.parse_client_hello(data) is None
    assert tls.parse_client_hello(data, partial=True) is None


def test_looks_like_tls() -> None:
    assert tls.looks_like_tls(TOR_CLIENT_HELLO)
    assert not tls.looks_like_tls(b"GET /")
    assert not tls.looks_like_tls(b"\x16\x03")


def test_cert_names_rejects_garbage() -> None:
    assert tls.cert_names(b"\x30\x03\x02\x01\x01") is None
    assert tls.cert_names(b"") is None


@given(st.binary(max_size=600), st.booleans())
def test_arbitrary_bytes_never_raise(data: bytes, partial: bool) -> None:
    tls.parse_client_hello(data, partial)
    tls.parse_server_hello(data, partial)
    tls.parse_client_hello(b"\x16\x03\x01" + data, partial)
    tls.parse_server_hello(b"\x16\x03\x03" + data, partial)
    tls.cert_names(data)
