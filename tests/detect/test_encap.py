"""egress.detect.encap: the packet each encapsulation carries, and the UDP tunnel flows it names, on real bytes
from nDPI's test captures (../shared/corpus-tunnels: vxlan.pcap, teredo.pcap, gre.pcapng, 4in4tunnel.pcap,
4in6tunnel.pcap, 6in4tunnel.pcap; the first packet of each, the outer headers cut off)."""

from __future__ import annotations

import os

import pytest

from egress.capture.packet import UDP, Defragmenter, decode
from egress.detect import encap
from egress.detect.base import Transport
from tests.detect.feeding import feed_datagrams, meta

VXLAN = bytes.fromhex(
    "0800000000045700667a50aaff9a1eea692a6fcf08004500003a35b040004011d6e50a0a140408080808ad950035002617e290c601"
    "0000010000000000000866616365626f6f6b03636f6d0000010001"
)
"""VXLAN VNI 1111 carrying Ethernet, IPv4, a DNS query for facebook.com (vxlan.pcap, UDP 60887 -> 4789)."""
TEREDO_QUALIFY = bytes.fromhex(
    "00010000b11b3fea46a9afe9006000000000083afffe800000000000000000fffffffffffeff020000000000000000000000000002"
    "85007d3800000000"
)
"""A Teredo client's qualification: authentication indicator, then an IPv6 router solicitation (teredo.pcap)."""
TEREDO_ANSWER = bytes.fromhex(
    "00010000b11b3fea46a9afe900000032de46f93f466000000000303afffe800000000000008000f2273d77e3b3fe80000000000000"
    "0000fffffffffffe8600649d0000000000003a98000007d003044040ffffffffffffffff0000000020010000c2881c4cff00000000"
    "200100"
)
"""The server's answer: authentication, origin indication (port and address), an IPv6 router advertisement."""
GRE_PPTP = bytes.fromhex(
    "3081880b014a98500000006a0000008cff03002145a0014638c100003f114dfbc0a80ad2c0a8672813c413c4013257d55349502f32"
    "2e302031303020547279696e670d0a"
)
"""Enhanced GRE (PPTP; key, sequence and acknowledgement) carrying PPP carrying IPv4/UDP SIP (gre.pcapng, cut
after the SIP status line: the inner IPv4 length no longer matches, which decoding tolerates)."""
IPIP = bytes.fromhex(
    "45b8008000010000fe11de840a0a64190a0a6502f39f4268006c4b9a0002000004736c100000000000010000abcdabcdabcdabcd"
)
"""IPv4 in IPv4 carrying UDP 10.10.100.25 -> 10.10.101.2:17000 (4in4tunnel.pcap, cut)."""
IPIP_IN_V6 = bytes.fromhex(
    "450000347bf040007f06ab1fc0a800010a0a0a01fbc701bbdfe13e82000000008002ffff7ea50000020405840103030801010402"
)
"""IPv4 in IPv6 carrying a TCP SYN 192.168.0.1 -> 10.10.10.1:443 (4in6tunnel.pcap)."""
SIX_IN_FOUR = bytes.fromhex(
    "6000000000403a3f200104701f17013f3e970efffe734dec2604a88000010020000000000224b0018000e0bd5d8f015a5d4e155600"
    "000000a8dd060000000000101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f3031323334353637"
)
"""IPv6 in IPv4 (protocol 41) carrying an ICMPv6 echo request (6in4tunnel.pcap)."""
GENEVE = b"\x00\x00\x65\x58\x00\x04\x57\x00" + VXLAN[8:]
"""GENEVE (RFC 8926 §3.4: version 0, no options, protocol 0x6558) around vxlan.pcap's inner frame: no public
GENEVE capture is in the corpus, so the header is built from the RFC."""


def _inner_proto(inner: encap.Inner) -> tuple[int, bytes, bytes]:
    segment = decode(inner.linktype, inner.frame, 0.0, Defragmenter())
    assert segment is not None
    return segment.proto, segment.src, segment.dst


@pytest.mark.parametrize(
    ("proto", "payload", "kind", "inner"),
    [
        (4, IPIP, "ipip", (UDP, bytes([10, 10, 100, 25]), bytes([10, 10, 101, 2]))),
        (4, IPIP_IN_V6, "ipip", (6, bytes([192, 168, 0, 1]), bytes([10, 10, 10, 1]))),
        (47, GRE_PPTP, "pptp-gre", (UDP, bytes([192, 168, 10, 210]), bytes([192, 168, 103, 40]))),
    ],
)
def test_ip_encapsulations_carry_the_packet_inside(
    proto: int, payload: bytes, kind: str, inner: tuple[int, bytes, bytes]
) -> None:
    found = encap.unwrap_ip(proto, payload)
    assert found is not None and found.kind == kind
    assert _inner_proto(found) == inner


def test_six_in_four_carries_ipv6() -> None:
    found = encap.unwrap_ip(41, SIX_IN_FOUR)
    assert found is not None and found.kind == "ipv6-in-ip"
    assert _inner_proto(found)[0] == 1  # ICMPv6, as the decoder numbers it


@pytest.mark.parametrize(
    ("port", "payload", "kind"),
    [
        (4789, VXLAN, "vxlan"),
        (6081, GENEVE, "geneve"),
        (3544, TEREDO_QUALIFY, "teredo"),
        (3544, TEREDO_ANSWER, "teredo"),
    ],
)
def test_udp_encapsulations_carry_the_packet_inside(port: int, payload: bytes, kind: str) -> None:
    found = encap.unwrap_udp(50000, port, payload)
    assert found is not None and found.kind == kind
    assert found.linktype in (encap.LINK_ETHERNET, encap.LINK_RAW)
    decode(found.linktype, found.frame, 0.0, Defragmenter())  # decodes without Malformed


@pytest.mark.parametrize(
    ("proto", "payload"),
    [(4, SIX_IN_FOUR), (41, IPIP), (47, b"\x00\x00\x08\x00junk"), (47, b"\x30\x01\x88\x0b" + bytes(12)), (50, IPIP)],
)
def test_what_is_not_an_encapsulated_packet_is_left_alone(proto: int, payload: bytes) -> None:
    assert encap.unwrap_ip(proto, payload) is None


@pytest.mark.parametrize(
    ("port", "payload"),
    [
        (4789, bytes(80)),  # no I flag
        (4789, VXLAN[:20]),
        (6081, b"\x40" + GENEVE[1:]),  # version 1
        (3544, b"\x00\x01" + bytes(30)),
        (3544, TEREDO_QUALIFY[:-1]),  # the IPv6 length no longer adds up
        (53, VXLAN),
    ],
)
def test_other_udp_payloads_are_left_alone(port: int, payload: bytes) -> None:
    assert encap.unwrap_udp(50000, port, payload) is None


@pytest.mark.parametrize(
    ("port", "datagrams", "protocol"),
    [
        (4789, [(True, VXLAN)], "vxlan"),
        (6081, [(True, GENEVE)], "geneve"),
        (3544, [(True, TEREDO_QUALIFY), (False, TEREDO_ANSWER)], "teredo"),
        (3544, [(False, TEREDO_ANSWER)], "teredo"),
    ],
)
def test_the_flow_is_named_a_tunnel(port: int, datagrams: list[tuple[bool, bytes]], protocol: str) -> None:
    found = feed_datagrams(encap.detect, datagrams, meta(port, Transport.UDP))
    assert found is not None and found.protocol == protocol and found.category == "tunnel"


@pytest.mark.parametrize("port", [4789, 6081, 3544, 51820, 443])
def test_random_datagrams_are_no_tunnel(port: int) -> None:
    datagrams = [(True, os.urandom(size)) for size in (80, 120, 1200)]
    assert feed_datagrams(encap.detect, datagrams, meta(port, Transport.UDP)) is None


def test_vxlan_is_not_taken_for_openvpn() -> None:
    """A VXLAN header opens like an OpenVPN V1 hard reset (0x08, zeros): the session id rules it out."""
    from egress.detect import vpn

    flow = meta(4789, Transport.UDP)
    assert feed_datagrams(vpn.detect, [(True, VXLAN), (True, VXLAN), (False, VXLAN)], flow) is None
