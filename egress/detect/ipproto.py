"""IP protocols other than TCP, UDP and ICMP: their names, and which of them are tunnels by definition.

Entry points: `protocol_name` (a number → the label records carry: ``gre``, ``sctp``, ``ip-253``) and `inspect`
(a packet of such a protocol → a tunnel `Finding`, or ``None``). Pure: bytes in, a finding out.

Numbers and names are IANA's "Assigned Internet Protocol Numbers" registry (keywords lower-cased). A packet of a
protocol whose purpose is to carry other packets is a tunnel whatever it holds:

- GRE (47; RFC 2784 §2: flags and version, then the EtherType of the payload; PPTP's enhanced GRE is version 1),
- IP in IP (4; RFC 2003 §3), IPv6 in IPv4 (41; RFC 4213 §3.5, 6in4/6to4), EtherIP (97; RFC 3378),
  MPLS in IP (137; RFC 4023), L2TPv3 (115; RFC 3931 §4.1.1), and ESP (50; RFC 4303) and AH (51; RFC 4302):
  IPsec carries a VPN.

The rest (SCTP, DCCP, UDP-Lite, OSPF, unknown numbers...) is recorded under its name as a firewall drop.
"""

from __future__ import annotations

import ipaddress
from typing import Final

from egress.detect import encap
from egress.detect.base import Category, Finding, evidence

DETECTOR = "ipproto"

NAMES: Final = {
    0: "hopopt", 2: "igmp", 4: "ipip", 8: "egp", 9: "igp", 33: "dccp", 41: "ipv6-in-ip", 43: "ipv6-route",
    44: "ipv6-frag", 46: "rsvp", 47: "gre", 50: "esp", 51: "ah", 59: "ipv6-nonxt", 60: "ipv6-opts", 88: "eigrp",
    89: "ospf", 94: "ipip-ka9q", 97: "etherip", 98: "encap", 103: "pim", 108: "ipcomp", 112: "vrrp", 115: "l2tp",
    132: "sctp", 135: "mobility", 136: "udplite", 137: "mpls-in-ip", 139: "hip", 140: "shim6", 142: "rohc",
}  # fmt: skip
"""IANA keywords of the protocols worth a name in a record; others are ``ip-<number>``."""

TUNNELS: Final = frozenset({4, 41, 47, 50, 51, 94, 97, 98, 115, 137})
"""Protocols whose only purpose is to carry other packets (encapsulation, IPsec)."""

_ETHERTYPES: Final = {0x0800: "ipv4", 0x86DD: "ipv6", 0x880B: "ppp", 0x6558: "ethernet", 0x8847: "mpls"}


def protocol_name(proto: int) -> str:
    """The label a record carries for IP protocol ``proto``: its IANA keyword, or ``ip-<number>``."""
    return NAMES.get(proto, f"ip-{proto}")


def _inner(version: int, data: bytes) -> str:
    """``src -> dst`` of the IP packet at the start of ``data``, or ``""``."""
    if version == 4 and len(data) >= 20 and data[0] >> 4 == 4:
        return f"{ipaddress.IPv4Address(data[12:16])} -> {ipaddress.IPv4Address(data[16:20])}"
    if version == 6 and len(data) >= 40 and data[0] >> 4 == 6:
        return f"{ipaddress.IPv6Address(data[8:24])} -> {ipaddress.IPv6Address(data[24:40])}"
    return ""


def _describe(proto: int, payload: bytes) -> str:
    name = protocol_name(proto)
    if proto == 47 and len(payload) >= 4:
        flags = payload[0]
        offset = 4 + 4 * sum(1 for bit in (0x80, 0x20, 0x10) if flags & bit)  # checksum, key, sequence
        kind = int.from_bytes(payload[2:4])
        inner = _inner(4 if kind == 0x0800 else 6 if kind == 0x86DD else 0, payload[offset:])
        what = _ETHERTYPES.get(kind, f"0x{kind:04x}")
        carried = encap.unwrap_ip(proto, payload)
        if not inner and carried is not None and carried.kind == "pptp-gre":  # PPP inside: its IP packet
            packet = carried.frame
            inner = _inner(packet[0] >> 4, packet)
        return f"{name} v{payload[1] & 7} carrying {what}" + (f" {inner}" if inner else "")
    if proto in (4, 94):
        return f"{name} carrying {_inner(4, payload) or 'not ipv4'}"
    if proto == 41:
        return f"{name} carrying {_inner(6, payload) or 'not ipv6'}"
    if proto in (50, 51) and len(payload) >= 8:
        spi = payload[0:4] if proto == 50 else payload[4:8]
        return f"{name} spi 0x{spi.hex()}"
    return f"{name} {len(payload)} bytes"


def inspect(proto: int, payload: bytes) -> Finding | None:
    """A tunnel finding for a packet of an encapsulating protocol (`TUNNELS`); ``None`` for any other."""
    if proto not in TUNNELS:
        return None
    return Finding(Category.TUNNEL, protocol_name(proto), DETECTOR, evidence(_describe(proto, payload)))


def describe(proto: int, payload: bytes) -> str:
    """A short printable description of one packet of ``proto`` (for a record's evidence)."""
    return evidence(_describe(proto, payload))
