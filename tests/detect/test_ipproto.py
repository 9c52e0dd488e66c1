"""Tests for egress.detect.ipproto: names of IP protocols, and the encapsulating ones as tunnels."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress.detect import ipproto
from egress.detect.base import Category

INNER4 = bytes.fromhex("4500001c0001000040110000c0000201c6336407") + bytes(8)


@pytest.mark.parametrize(
    ("proto", "name"), [(47, "gre"), (4, "ipip"), (41, "ipv6-in-ip"), (132, "sctp"), (136, "udplite"), (253, "ip-253")]
)
def test_names(proto: int, name: str) -> None:
    assert ipproto.protocol_name(proto) == name


@pytest.mark.parametrize(
    ("proto", "payload", "evidence"),
    [
        (47, b"\x00\x00\x08\x00" + INNER4, "gre v0 carrying ipv4 192.0.2.1 -> 198.51.100.7"),
        (47, b"\x30\x01\x88\x0b\x00\x08\x00\x01\x00\x00\x00\x01", "gre v1 carrying ppp"),  # PPTP
        # PPTP's GRE with PPP (address, control, protocol 0x0021) carrying IPv4: the inner addresses
        (
            47,
            b"\x30\x01\x88\x0b\x00\x08\x00\x01\x00\x00\x00\x01\xff\x03\x00\x21" + INNER4,
            "gre v1 carrying ppp 192.0.2.1 -> 198.51.100.7",
        ),
        (47, b"\x20\x00\x65\x58" + bytes(4) + bytes(14), "gre v0 carrying ethernet"),  # key present: offset 8
        (4, INNER4, "ipip carrying 192.0.2.1 -> 198.51.100.7"),
        (41, b"garbage", "ipv6-in-ip carrying not ipv6"),
        (50, bytes.fromhex("0000100100000001") + bytes(16), "esp spi 0x00001001"),
        (51, bytes.fromhex("3b040000") + bytes.fromhex("00002002") + bytes(4), "ah spi 0x00002002"),
    ],
)
def test_encapsulations_are_tunnels(proto: int, payload: bytes, evidence: str) -> None:
    finding = ipproto.inspect(proto, payload)
    assert finding is not None
    assert (finding.category, finding.protocol, finding.detector) == (
        Category.TUNNEL,
        ipproto.protocol_name(proto),
        "ipproto",
    )
    assert finding.evidence == evidence


@pytest.mark.parametrize("proto", [132, 136, 33, 89, 253, 2])
def test_other_protocols_are_not_tunnels(proto: int) -> None:
    assert ipproto.inspect(proto, b"anything") is None
    assert ipproto.describe(proto, b"abc") == f"{ipproto.protocol_name(proto)} 3 bytes"


@given(st.integers(0, 255), st.binary(max_size=80))
def test_arbitrary_packets_never_raise(proto: int, payload: bytes) -> None:
    ipproto.inspect(proto, payload)
    ipproto.describe(proto, payload)
