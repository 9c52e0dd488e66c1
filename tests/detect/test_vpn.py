"""Tests for egress.detect.vpn: OpenVPN (UDP and TCP), WireGuard and IKE."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress.detect import vpn
from egress.detect.base import Category, Transport
from tests.detect.feeding import feed_datagrams, feed_every_split, feed_stream, meta

H = bytes.fromhex
UDP = Transport.UDP

# tunnel/ndpi_openvpn.pcap, 192.168.75.18:60201 -> :443 (client only): hard reset V2, then an ACK, same session.
OVPN_UDP_CLIENT = [H("38334857703d96db390000000000"), H("28334857703d96db390100000000d31c3a6964602fa0")]
# tunnel/ndpi_openvpn.pcap, 3.111.166.78:51146 -> :1194: the client reset and the server's reset that acks it.
OVPN_UDP_RESET = H("3839fded2daa10a4370000000000")
OVPN_UDP_ANSWER = H("409421917de7267729010000000039fded2daa10a43700000000")
# tunnel/ndpi_openvpn.pcap, 192.168.12.156:41133 -> :443, tls-auth (HMAC after the session id), cut to 40 bytes.
OVPN_TLS_AUTH = [
    H("389753568924842f7ba6451d00b204542cec1183d286579c7a0d1b4e77c933bd1e44c778043835"),
    H("289753568924842f7bc9d5e05ebd0184e0b34b7ea24425a47abb22d7a1385f0ebfabe6ba3754e8"),
]
# tunnel/ndpi_openvpn.pcap, 10.181.235.122:39772 -> :1194 over TCP: two length-prefixed packets of each side.
OVPN_TCP_CLIENT = H("000e38507a28a78275788d0000000000001628507a28a78275788d01000000009ad747beb24d8a1b")
OVPN_TCP_SERVER = H("001a409ad747beb24d8a1b0100000000507a28a78275788d00000000")

# tunnel/ndpi_wireguard.pcap, 10.9.0.1:43462 -> :51820: handshake initiation and response.
WG_INITIATION = H(
    "01000000d837d0305fcec7c8e5c8e2e3f7989eef60c228d82329d602b6b1e2bb9d068f89cf9d4d4532780f6d27264f7b98701fdc27a4ec00"
    "aeb6becdbef2332f1b4084cadb93823935c012ae255e7b25eff13940c321fa6bd66a2a87b061db1430173e937f569349de2856dc5f261676"
    "3eeeafc0533b01dd965e7ec76976e28f683d671200000000000000000000000000000000"
)
WG_RESPONSE = H(
    "0200000006f47dabd837d030b18d5550bd4042a37a46823ac08db1ec66839bc0ca2d64bc15cd80232b66232faec24af8918de1060ff5c98e"
    "865d5f35f272214c5260110dc4c61e32cdd8542100000000000000000000000000000000"
)
# tunnel/ndpi_wireguard.pcap, 139.162.192.157:51820 -> :36116 (mid-session): two transport data messages
# of one side, cut to 48 bytes.
WG_DATA_1 = H("04000000be40698d6b00000000000000d509d95ad7408d354597c9afc3c4c2064484d35cbbac74dd559267aedd8401c7")
WG_DATA_2 = H("04000000be40698d6c000000000000000a5a02caed5e91f584911630868ca27d89a74ec360ab459e8b3d289d9dc4d5ec")
# tunnel/ndpi_tunnelbear.pcap (../shared/corpus-tunnels), 10.0.2.15:57636 -> 142.93.78.79:51820: TunnelBear's
# 204-byte initiation and 100-byte response (the same layout, longer; nDPI wireguard.c).
TB_INITIATION = H(
    "01000000316618ac09ad0e1ccda196d9f8af6627c303d6d9811fa0a060b52f55d3e536f87df38d4c48889e8ec00c25e0bfa8af86339a"
    "ccc8c2fedddf358f85eac52598bb092890c283218f527b7ffeb24f022bb400d7fc145f00ec9df5de39f214902d46ae83bd5537582f1b"
    "20ad93bf0167ddb25445d47b24e396f1ae2282a8a0785039724848e7e1755c73d2998f004b42beb0ab95c61d3ca718712cfb1db7088e"
    "4e4091d316eb35f620db502881a44c8db7d03ec48b0d839a318000000000000000000000000000000000"
)
TB_RESPONSE = H(
    "0200000002ca1a00316618ac0a000533ac110301131365569c1ed86608418d59e9350dca4c94ce103d928c558ef2cd5d202a107727d5"
    "f00134b81a06d0e4a2697f8fd0c4464d87c00132402fa4411b1e60a5dfe200000000000000000000000000000000"
)
# RFC 7296 §3.1 header of an IKE_SA_INIT request (SPIs invented; no public capture in the corpus), length 28.
IKE_SA_INIT = H("1122334455667788000000000000000021202208000000000000001c")


@pytest.mark.parametrize(
    ("client", "server", "protocol"),
    [
        (OVPN_UDP_CLIENT, [], "openvpn"),
        ([OVPN_UDP_RESET], [OVPN_UDP_ANSWER], "openvpn"),
        (OVPN_TLS_AUTH, [], "openvpn"),
        ([OVPN_UDP_RESET, OVPN_UDP_RESET], [], "openvpn"),
        ([WG_INITIATION], [WG_RESPONSE], "wireguard"),
        ([WG_INITIATION], [], "wireguard"),
        ([], [WG_RESPONSE], "wireguard"),
        ([WG_DATA_1, WG_DATA_2], [], "wireguard"),
        ([TB_INITIATION], [TB_RESPONSE], "wireguard"),
        ([TB_INITIATION], [], "wireguard"),
        ([IKE_SA_INIT], [], "ipsec-ike"),
        ([b"\x00\x00\x00\x00" + IKE_SA_INIT], [], "ipsec-ike"),
    ],
)
def test_udp_tunnels(client: list[bytes], server: list[bytes], protocol: str) -> None:
    datagrams = [(True, d) for d in client] + [(False, d) for d in server]
    found = feed_datagrams(vpn.detect, datagrams, meta(500, UDP))
    assert found is not None
    assert (found.category, found.protocol, found.detector) == (Category.TUNNEL, protocol, "vpn")


def test_tcp_openvpn_every_split() -> None:
    results = feed_every_split(vpn.detect, OVPN_TCP_CLIENT, OVPN_TCP_SERVER, meta(1194))
    assert all(result == results[0] for result in results)
    assert results[0] is not None
    assert results[0].protocol == "openvpn"
    assert "507a28a78275788d" in results[0].evidence


def test_tcp_openvpn_answered_by_server() -> None:
    assert feed_stream(vpn.detect, OVPN_TCP_CLIENT[:16], OVPN_TCP_SERVER, meta(1194)) is not None
    assert feed_stream(vpn.detect, OVPN_TCP_CLIENT[:16], b"", meta(1194)) is None


@pytest.mark.parametrize(
    ("client", "server"),
    [
        ([OVPN_UDP_RESET], []),  # one reset and nothing else: too weak
        ([OVPN_UDP_RESET, H("28000000000000000001000000")], []),  # session id changed
        ([OVPN_UDP_RESET], [H("40aaaaaaaaaaaaaaaa010000000000000000000000000000000000")]),  # answer acks another
        ([WG_INITIATION[:147]], []),
        ([WG_DATA_1], []),
        ([WG_DATA_1, WG_DATA_1], []),  # replayed counter
        ([H("0100000000000000") + bytes(140)], [H("c0000000010800")]),
        ([H("1b0100000001000000000000")], [H("1b8180000001000100")]),  # DNS-like
        ([IKE_SA_INIT[:-1] + b"\x1d"], []),  # length field disagrees
    ],
)
def test_udp_no_finding(client: list[bytes], server: list[bytes]) -> None:
    datagrams = [(True, d) for d in client] + [(False, d) for d in server]
    assert feed_datagrams(vpn.detect, datagrams, meta(500, UDP)) is None


def test_ike_needs_its_ports() -> None:
    assert feed_datagrams(vpn.detect, [(True, IKE_SA_INIT)], meta(5000, UDP)) is None


@pytest.mark.parametrize(
    "client",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"GET / HTTP/1.1\r\n\r\n",
        H("000e28507a28a78275788d0000000000"),  # ACK as first packet: not a session start
    ],
)
def test_tcp_no_finding(client: bytes) -> None:
    assert feed_stream(vpn.detect, client, b"", meta(443)) is None


@given(st.lists(st.tuples(st.booleans(), st.binary(max_size=160)), max_size=6), st.sampled_from([500, 4500, 1194]))
def test_arbitrary_datagrams_never_raise(datagrams: list[tuple[bool, bytes]], port: int) -> None:
    feed_datagrams(vpn.detect, datagrams, meta(port, UDP))
    feed_datagrams(vpn.detect, [(f, b"\x01\x00\x00\x00" + d) for f, d in datagrams], meta(port, UDP))


@given(st.binary(max_size=120), st.binary(max_size=60))
def test_arbitrary_stream_never_raises(client: bytes, server: bytes) -> None:
    feed_stream(vpn.detect, client, server, meta(1194))
    feed_stream(vpn.detect, b"\x00\x0e\x38" + client, server, meta(1194))


@pytest.mark.parametrize("port", [51820, 443, 5060, 2408, 41641, 3478, 12345])
@pytest.mark.parametrize(("initiation", "answer"), [(WG_INITIATION, WG_RESPONSE), (TB_INITIATION, TB_RESPONSE)])
def test_wireguard_on_any_udp_port(port: int, initiation: bytes, answer: bytes) -> None:
    """WireGuard by the shape of its handshake, whatever the port (WARP's 2408, Tailscale's 41641...)."""
    found = feed_datagrams(vpn.detect, [(True, initiation), (False, answer)], meta(port, UDP))
    assert found is not None and found.protocol == "wireguard"


def test_an_answer_to_the_peers_initiation_is_enough() -> None:
    """A response whose receiver index is the initiation's sender index, even with key material that does not
    look random on its own (a zeroed response): the index match is the evidence (nDPI wireguard.c)."""
    zeroed = TB_RESPONSE[:12] + bytes(len(TB_RESPONSE) - 12)
    cookie = b"\x03\x00\x00\x00" + TB_INITIATION[4:8] + bytes(56)
    for answer in (zeroed, cookie):
        flow = meta(2408, UDP)
        found = feed_datagrams(vpn.detect, [(True, TB_INITIATION[:8] + bytes(196)), (False, answer)], flow)
        assert found is not None and "to the peer's initiation" in found.evidence
    unrelated = b"\x03\x00\x00\x00" + b"\x01\x02\x03\x04" + bytes(56)
    assert feed_datagrams(vpn.detect, [(True, TB_INITIATION[:8] + bytes(196)), (False, unrelated)], flow) is None
