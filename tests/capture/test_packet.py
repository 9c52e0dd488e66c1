"""Frame decoding: every link type we claim, IPv4/IPv6 with fragments, and malformed frames."""

from __future__ import annotations

import contextlib
import socket
import struct

import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress.capture.packet import ICMP, TCP, UDP, Defragmenter, Malformed, decode
from tests.budget import examples

SRC4, DST4 = socket.inet_aton("192.0.2.10"), socket.inet_aton("198.51.100.20")
SRC6, DST6 = socket.inet_pton(socket.AF_INET6, "2001:db8::10"), socket.inet_pton(socket.AF_INET6, "2001:db8::20")


def _tcp(payload: bytes = b"hello", flags: int = dpkt.tcp.TH_ACK | dpkt.tcp.TH_PUSH) -> dpkt.tcp.TCP:
    return dpkt.tcp.TCP(sport=40000, dport=3333, seq=1000, flags=flags, data=payload)


def _ipv4(body: dpkt.Packet, proto: int = 6) -> bytes:
    return bytes(dpkt.ip.IP(src=SRC4, dst=DST4, p=proto, data=body))


def _ipv6(body: dpkt.Packet, nxt: int = 6) -> bytes:
    ip6 = dpkt.ip6.IP6(src=SRC6, dst=DST6, nxt=nxt, hlim=64, data=body)
    ip6.plen = len(bytes(body))
    return bytes(ip6)


def _ether(ip: bytes, ethertype: int = 0x0800, vlan_tags: int = 0) -> bytes:
    head = b"\x02" * 6 + b"\x04" * 6
    for tag in range(vlan_tags):
        head += struct.pack(">HH", 0x8100, 100 + tag)
    return head + struct.pack(">H", ethertype) + ip


@pytest.mark.parametrize(
    ("linktype", "frame"),
    [
        (1, _ether(_ipv4(_tcp()))),
        (1, _ether(_ipv4(_tcp()), vlan_tags=1)),
        (1, _ether(_ipv4(_tcp()), vlan_tags=2)),
        (113, b"\x00\x00\x00\x01\x00\x06" + b"\x02" * 6 + b"\x00\x00" + b"\x08\x00" + _ipv4(_tcp())),
        (276, b"\x08\x00\x00\x00" + b"\x00\x00\x00\x02" + b"\x00\x01\x00\x06" + b"\x02" * 8 + _ipv4(_tcp())),
        (101, _ipv4(_tcp())),
        (228, _ipv4(_tcp())),
        (0, struct.pack("<I", 2) + _ipv4(_tcp())),
        (0, struct.pack(">I", 2) + _ipv4(_tcp())),
        (108, struct.pack(">I", 2) + _ipv4(_tcp())),
    ],
    ids=["ethernet", "vlan", "qinq", "sll", "sll2", "raw", "ipv4", "null-le", "null-be", "loop"],
)
def test_link_types_decode_to_the_same_tcp_segment(linktype: int, frame: bytes) -> None:
    segment = decode(linktype, frame, 0.0, Defragmenter())
    assert segment is not None
    assert (segment.proto, segment.src, segment.dst, segment.sport, segment.dport) == (TCP, SRC4, DST4, 40000, 3333)
    assert segment.payload == b"hello"
    assert segment.seq == 1000


def test_ipv6_udp_and_padding_is_trimmed() -> None:
    udp = dpkt.udp.UDP(sport=5353, dport=53, data=b"query")
    udp.ulen = 8 + 5
    frame = _ether(_ipv6(udp, nxt=17), 0x86DD) + b"\x00" * 6  # Ethernet padding
    segment = decode(1, frame, 0.0, Defragmenter())
    assert segment is not None
    assert (segment.proto, segment.src, segment.payload) == (UDP, SRC6, b"query")


def test_icmp_echo_carries_identifier_type_and_data() -> None:
    echo = dpkt.icmp.ICMP(type=8, data=dpkt.icmp.ICMP.Echo(id=77, seq=1, data=b"x" * 40))
    segment = decode(101, _ipv4(echo, proto=1), 0.0, Defragmenter())
    assert segment is not None
    assert (segment.proto, segment.flags, segment.sport, segment.payload) == (ICMP, 8, 77, b"x" * 40)


def test_icmpv6_echo_types_map_to_icmpv4_numbers() -> None:
    echo = dpkt.icmp6.ICMP6(type=129, data=dpkt.icmp6.ICMP6.Echo(id=5, seq=1, data=b"pong"))
    segment = decode(101, _ipv6(echo, nxt=58), 0.0, Defragmenter())
    assert segment is not None
    assert (segment.proto, segment.flags, segment.payload) == (ICMP, 0, b"pong")


def _fragments_v4(payload: bytes, size: int) -> list[bytes]:
    pieces = []
    for offset in range(0, len(payload), size):
        more = offset + size < len(payload)
        ip = dpkt.ip.IP(src=SRC4, dst=DST4, p=17, id=4242, data=payload[offset : offset + size], mf=int(more))
        ip.offset = offset // 8  # dpkt takes the field in 8-byte units
        pieces.append(bytes(ip))
    return pieces


@pytest.mark.parametrize("order", ["in-order", "reversed"])
def test_ipv4_fragments_are_reassembled(order: str) -> None:
    udp = dpkt.udp.UDP(sport=53, dport=40000, data=b"A" * 3000)
    udp.ulen = 3008
    pieces = _fragments_v4(bytes(udp), 1480)
    if order == "reversed":
        pieces.reverse()
    defrag = Defragmenter()
    results = [decode(101, piece, 0.0, defrag) for piece in pieces]
    assert results[:-1] == [None] * (len(pieces) - 1)
    whole = results[-1]
    assert whole is not None
    assert whole.payload == b"A" * 3000


def test_ipv6_fragments_are_reassembled() -> None:
    udp = bytes(dpkt.udp.UDP(sport=53, dport=40000, ulen=8 + 2000, data=b"B" * 2000))
    defrag = Defragmenter()
    out = []
    for offset in range(0, len(udp), 1232):
        chunk = udp[offset : offset + 1232]
        more = offset + 1232 < len(udp)
        frag_header = struct.pack(">BBHI", 17, 0, offset | int(more), 99)
        ip6 = struct.pack(">IHBB", 6 << 28, len(frag_header) + len(chunk), 44, 64) + SRC6 + DST6
        out.append(decode(229, ip6 + frag_header + chunk, 0.0, defrag))
    assert out[0] is None
    assert out[-1] is not None
    assert out[-1].payload == b"B" * 2000


@pytest.mark.parametrize(
    "frame",
    [_ether(b"\x45\x00\x00"), _ether(_ipv4(_tcp())[:30]), _ether(b"\x60" + b"\x00" * 20, 0x86DD)],
    ids=["short-ipv4", "short-tcp", "short-ipv6"],
)
def test_malformed_frames_raise_malformed(frame: bytes) -> None:
    with pytest.raises(Malformed):
        decode(1, frame, 0.0, Defragmenter())


def test_non_ip_frames_are_ignored() -> None:
    assert decode(1, _ether(b"\x00" * 28, 0x0806), 0.0, Defragmenter()) is None  # ARP
    assert decode(105, b"\x00" * 40, 0.0, Defragmenter()) is None  # 802.11: unsupported link type


@settings(max_examples=examples(500), deadline=None)
@given(linktype=st.sampled_from([0, 1, 101, 108, 113, 276]), frame=st.binary(max_size=120))
def test_arbitrary_frames_only_raise_what_the_scanner_counts(linktype: int, frame: bytes) -> None:
    with contextlib.suppress(Malformed, IndexError):
        decode(linktype, frame, 0.0, Defragmenter())


@pytest.mark.parametrize(
    ("frame", "proto", "ports", "payload"),
    [
        (_ipv4(b"\x00\x00\x08\x00inner", proto=47), 47, (0, 0), b"\x00\x00\x08\x00inner"),  # GRE
        (_ipv4(struct.pack(">HHII", 40000, 9899, 0, 0), proto=132), 132, (40000, 9899), None),  # SCTP: ports
        (_ipv4(struct.pack(">HHHH", 5, 6, 8, 0), proto=136), 136, (5, 6), None),  # UDP-Lite: ports
        (_ipv6(b"\x2f\x00\x01\x04\x00\x00\x00\x00GREDATA!", nxt=60), 47, (0, 0), b"GREDATA!"),  # dest opts → GRE
        (_ipv6(b"\x04\x04\x00\x00\x00\x00\x00\x01" + bytes(16) + b"inner-ip", nxt=51), 4, (0, 0), None),  # AH → IPIP
        (_ipv6(b"", nxt=59), 59, (0, 0), b""),  # no next header
    ],
    ids=["gre", "sctp", "udplite", "v6-destopts-gre", "v6-ah-ipip", "v6-nonxt"],
)
def test_any_protocol_decodes_every_ip_protocol(
    frame: bytes, proto: int, ports: tuple[int, int], payload: bytes | None
) -> None:
    assert decode(101, frame, 0.0, Defragmenter()) is None  # the scanner's view: TCP, UDP, ICMP only
    segment = decode(101, frame, 0.0, Defragmenter(), any_protocol=True)
    assert segment is not None
    assert (segment.proto, (segment.sport, segment.dport)) == (proto, ports)
    if payload is not None:
        assert segment.payload == payload


def test_fragments_of_any_protocol_are_reassembled() -> None:
    body = b"\x00\x00\x08\x00" + bytes(range(40))
    whole = dpkt.ip.IP(src=SRC4, dst=DST4, p=47, id=9, data=body)
    pieces = []
    for offset in (0, 16, 32):
        chunk = body[offset : offset + 16]
        more = offset + 16 < len(body)
        piece = dpkt.ip.IP(src=SRC4, dst=DST4, p=47, id=9, data=chunk)
        piece.mf, piece.offset = int(more), offset // 8  # dpkt takes the field: units of 8 bytes
        pieces.append(bytes(piece))
    defrag = Defragmenter()
    results = [decode(101, piece, 0.0, defrag, any_protocol=True) for piece in pieces]
    assert results[:-1] == [None, None]
    assert results[-1] is not None and results[-1].payload == bytes(whole.data)
