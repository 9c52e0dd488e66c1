"""Fully encrypted openings (egress.detect.encrypted): the Wu et al. / nDPI heuristic, without the exemptions an
attacker meets for free (a printable prefix, a printable run) and with TLS/HTTP exempt only when they are whole."""

from __future__ import annotations

import json
import random

import pytest

from egress.detect import encrypted
from egress.detect.base import Category
from egress.detect.encrypted import Opening, fully_encrypted, opening
from egress.detect.engine import FlowInspector
from tests.detect.feeding import feed_every_split, feed_stream, meta
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


# corpus-tunnels, tunnel/ndpi_tls_heur__{shadowsocks,vmess}-tcp.pcapng (nDPI's tests): the first 96 bytes of each
# direction of the proxy flow (client :4xxxx -> server :1234).
SS_CORPUS = (
    bytes.fromhex(
        "81036ac62c0133a8f1302dbfca15f2f97bcbd4ec8ccf2698e834a8338634418793815f1924b5bf54df46feab2ce977458b2cb546"
        "879ba1131efa1330d8a161b089624ebf846a720bd79a9865154420098863c4261bf8a3fb1e2795ac3d7bacaf"
    ),
    bytes.fromhex(
        "42c5460ef5d8731cfabebd4670e6f1c9ecb0c294e6736e6f48d2edaadef13ab69f4f7e7d6817af6196487339b9f1f6eedd605a"
        "9fdfdbe38112b73b033f1055de8d2c758a4d27f279758f55235b95e0fb836ea59029730d2f36a431507fa9b4a0"
    ),
)
VMESS_CORPUS = (
    bytes.fromhex(
        "51d9088e8883d2560faa57138a0b61367a300d0e4906ec115409bc84343b1a7f73b504b323409bf2bfa672f27edc20421b99f5"
        "d2aeeac07f1f930fc105e738ff833c43aa3c4a3b3b2cd0fbf0063edfa46393a9873fd00e2d474676f8ece78d0a"
    ),
    bytes.fromhex(
        "eb6740b0caafa7268cebcbc61307af77edb67df9d1cf5c898512555cf24208b0928174ea15318c8c1f9898b81d8fa2d74c581d"
        "3dbfa37bfff0b321cfeab4522524f488c0a5d14c8485f1a0491fceaf66489637c2fd812f432774ebe1fb7ffab8"
    ),
)
# corpus, benign/ndpi_http_ipv6.pcap: a capture that begins inside a TLS connection (application data records).
TLS_MIDSTREAM = (
    bytes.fromhex(
        "17030300b14a216c5ea1aa6da23dbaf969c51eadc7ef0ca297a3a791c5044400ba873142cf90a72b8a3f48facf77edaf8fb63f"
        "f8f252c743559bdd28302392240523a1aefe8856babfc8e86f7fb5ce8da6c1aaf6dd71a1ea7f50c60c780f3cea"
    ),
    bytes.fromhex(
        "1703030021a99a29741700427e97a1911833c2598924f3f188609175c9933d51c578eba4752917030300a4b4d0056e2b0770"
        "5354ce7cc55207a6034c5341b16429de5aa31febac0ebf7fc1bac37b1a6d77f4ed59fed09b93380ca6070efc695c"
    ),
)


@pytest.mark.parametrize("flow", [SS_CORPUS, VMESS_CORPUS], ids=["shadowsocks", "vmess"])
def test_a_fully_encrypted_proxy_stream_is_named_at_every_split(flow: tuple[bytes, bytes]) -> None:
    client, server = flow
    for found in feed_every_split(encrypted.detect_stream, client, server, meta(1234)):
        assert found is not None and (found.category, found.protocol) == (Category.TUNNEL, "fully-encrypted")
        assert "random-looking" in found.evidence


@pytest.mark.parametrize(
    ("client", "server"),
    [
        TLS_MIDSTREAM,
        (SS_CORPUS[0], b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"),
        (SS_CORPUS[0], b"SSH-2.0-OpenSSH_9.6\r\n"),
        (SS_CORPUS[0][:40], SS_CORPUS[1]),
        (b"SSH-2.0-OpenSSH_9.6\r\n" + SS_CORPUS[0], SS_CORPUS[1]),
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" + SS_CORPUS[0], SS_CORPUS[1]),
        (b"\x00\x00\x00\x08\x04\xd2\x16\x2f" * 12, SS_CORPUS[1]),
    ],
    ids=["tls-midstream", "server-answers-http", "server-answers-ssh", "short-opening", "ssh", "http", "zero-bits"],
)
def test_what_is_not_a_fully_encrypted_proxy_stream_is_clean(client: bytes, server: bytes) -> None:
    assert all(found is None for found in feed_every_split(encrypted.detect_stream, client, server, meta(1234)))


def test_the_answer_does_not_depend_on_how_the_server_s_bytes_were_cut() -> None:
    """Found by hypothesis (tests/detect/test_segmentation.py): the bit count was judged on a prefix of the server's
    window as soon as it held `STREAM_MIN` bytes, so a server whose first bytes are mostly zero bits (a prefix
    under the band) but whose whole window is random cleared the flow when fed in small pieces and was found fed
    whole. Each direction is now judged on its whole window (or all it sent, at the close)."""
    rng = random.Random(7)
    client = rng.randbytes(1500)
    server = bytes(8) + rng.randbytes(1016)
    assert not fully_encrypted(server[: encrypted.STREAM_MIN]) and fully_encrypted(server)
    whole = feed_stream(encrypted.detect_stream, client, server, meta(1234))
    inspector = FlowInspector(meta(1234), (encrypted.detect_stream,))
    inspector.feed_stream(True, client)
    for offset in range(len(server)):
        inspector.feed_stream(False, server[offset : offset + 1])
    cut = inspector.close()
    assert whole is not None and whole.protocol == "fully-encrypted"
    assert cut == whole


@pytest.mark.parametrize("seed", range(8))
def test_the_printable_share_counts_bytes_0x20_to_0x7e(seed: int) -> None:
    data = random.Random(seed).randbytes(seed * 37)
    expected = sum(1 for byte in data if 0x20 <= byte < 0x7F) / len(data) if data else 0.0
    assert encrypted.printable_share(data) == expected
    assert encrypted.printable_share(bytes(range(256))) == 95 / 256
