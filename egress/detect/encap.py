"""Encapsulations: the packet a tunnel carries, cut out of the outer packet's payload, and UDP tunnel flows.

Entry points: `unwrap_ip` (an IP protocol's payload: IP in IP, IPv6 in IPv4, GRE) and `unwrap_udp` (a UDP payload
on the port of VXLAN, GENEVE or Teredo) return an `Inner` (the frame, Ethernet or raw IP, for the capture decoder
to decode again) or ``None`` when the bytes do not have the encapsulation's shape; `detect` (a UDP `FlowView`
detector) names a VXLAN, GENEVE or Teredo flow. Pure byte slicing; the scanner bounds how deep it goes
(`egress.scanner.MAX_DEPTH`) and scans the inner packets like any other.

Header layouts (the RFCs named on each):

- IP in IP (protocol 4, RFC 2003 §3; also 94) and IPv6 in IPv4 (41, RFC 4213 §3.5): the payload is the inner IP
  packet.
- GRE (47): version 0 (RFC 2784 §2.1, RFC 1701 §2.1/RFC 2890 keys and sequence numbers): flags, version, the
  EtherType of the payload, then a checksum and offset word when C or R is set, a key when K is set, a sequence
  number when S is set. EtherType 0x0800/0x86DD is IP, 0x6558 (transparent Ethernet bridging) an Ethernet frame,
  0x88BE ERSPAN type II an 8-byte ERSPAN header then Ethernet. Version 1 is PPTP's enhanced GRE (RFC 2637 §4.1):
  the key (payload length, call id) always, the sequence number when S is set, the acknowledgement when the A bit
  (0x80 of the second byte) is set; the payload is PPP (0x880B), optionally opening with address and control
  bytes 0xFF 0x03, then the PPP protocol (RFC 1661 §2; 0x0021 IPv4, 0x0057 IPv6, possibly compressed to one
  byte). MPPE-encrypted PPP (0x00FD) has nothing to decode.
- VXLAN (UDP 4789, RFC 7348 §5): 8 bytes, flags 0x08 (the I bit; the rest and the next three bytes reserved,
  zero), a 24-bit VNI, a reserved zero byte, then an Ethernet frame.
- GENEVE (UDP 6081, RFC 8926 §3.4): version 0 in the top two bits, option length in 4-byte units in the low six,
  the O and C flags then six reserved zero bits,
  the protocol type (0x6558 Ethernet, 0x0800/0x86DD IP), a 24-bit VNI; options follow the 8-byte header.
- Teredo (UDP 3544, RFC 4380 §5.1.1): an IPv6 packet, optionally preceded by an authentication indicator
  (0x0001, id length, auth length, id, auth, 8-byte nonce, confirmation byte) and/or an origin indication
  (0x0000, port, address: 8 bytes).
"""

from __future__ import annotations

import ipaddress
from typing import Final, NamedTuple

from egress.detect.base import MORE, Category, Finding, FlowView, Result, Transport, evidence

NAME = "encap"
LINK_ETHERNET: Final = 1
LINK_RAW: Final = 101
"""pcap link types of the inner frame (the values of `egress.capture.packet`, which detectors do not import)."""

VXLAN_PORT: Final = 4789
GENEVE_PORT: Final = 6081
TEREDO_PORT: Final = 3544
UDP_PORTS: Final = frozenset({VXLAN_PORT, GENEVE_PORT, TEREDO_PORT})
"""UDP ports whose payload may be an encapsulated packet (the server's port: either side of the flow)."""

_VXLAN_FLAGS: Final = b"\x08\x00\x00\x00"
"""The I flag and the reserved bits, which RFC 7348 §5 says are zero when sent."""
_IP_ETHERTYPES: Final = frozenset({0x0800, 0x86DD})
_PPP_IP: Final = frozenset({0x0021, 0x0057})


class Inner(NamedTuple):
    """The packet a tunnel carries: decode ``frame`` with ``linktype``; ``kind`` names the encapsulation."""

    kind: str
    linktype: int
    frame: bytes


def _ip_packet(data: bytes, version: int | None = None) -> bool:
    return bool(data) and (data[0] >> 4 in (4, 6) if version is None else data[0] >> 4 == version)


def _by_ethertype(kind: str, ethertype: int, data: bytes) -> Inner | None:
    if ethertype in _IP_ETHERTYPES and _ip_packet(data, 4 if ethertype == 0x0800 else 6):
        return Inner(kind, LINK_RAW, data)
    if ethertype == 0x6558 and len(data) >= 14:
        return Inner(kind, LINK_ETHERNET, data)
    if ethertype == 0x88BE and len(data) >= 22:
        return Inner(kind, LINK_ETHERNET, data[8:])
    return None


def _gre(payload: bytes) -> Inner | None:
    if len(payload) < 4:
        return None
    flags, version, ethertype = payload[0], payload[1] & 0x07, int.from_bytes(payload[2:4])
    if version == 0:
        offset = 4 + 4 * bool(flags & 0xC0) + 4 * bool(flags & 0x20) + 4 * bool(flags & 0x10)
        return _by_ethertype("gre", ethertype, payload[offset:])
    if version != 1 or ethertype != 0x880B or not flags & 0x20:
        return None
    offset = 8 + 4 * bool(flags & 0x10) + 4 * bool(payload[1] & 0x80)
    ppp = payload[offset:]
    if ppp[:2] == b"\xff\x03":
        ppp = ppp[2:]
    if ppp[:1] and ppp[0] & 1:  # protocol field compressed to its low byte (RFC 1661 §6.5)
        protocol, ppp = ppp[0], ppp[1:]
    else:
        protocol, ppp = int.from_bytes(ppp[:2]), ppp[2:]
    return Inner("pptp-gre", LINK_RAW, ppp) if protocol in _PPP_IP and _ip_packet(ppp) else None


def unwrap_ip(proto: int, payload: bytes) -> Inner | None:
    """The packet inside an IP protocol's payload, for IP in IP, IPv6 in IP and GRE; ``None`` for others."""
    if proto in (4, 94):
        return Inner("ipip", LINK_RAW, payload) if _ip_packet(payload, 4) else None
    if proto == 41:
        return Inner("ipv6-in-ip", LINK_RAW, payload) if _ip_packet(payload, 6) else None
    if proto == 47:
        return _gre(payload)
    return None


def _teredo(payload: bytes) -> Inner | None:
    data = payload
    if data[:2] == b"\x00\x01" and len(data) >= 4:  # authentication indicator
        data = data[4 + data[2] + data[3] + 9 :]
    if data[:2] == b"\x00\x00" and len(data) >= 8:  # origin indication
        data = data[8:]
    if len(data) >= 40 and data[0] >> 4 == 6 and int.from_bytes(data[4:6]) + 40 == len(data):
        return Inner("teredo", LINK_RAW, data)
    return None


def unwrap_udp(sport: int, dport: int, payload: bytes) -> Inner | None:
    """The packet inside a UDP payload on the port of VXLAN, GENEVE or Teredo, when it has that shape."""
    if VXLAN_PORT in (sport, dport) and len(payload) >= 22 and payload[:4] == _VXLAN_FLAGS and not payload[7]:
        return Inner("vxlan", LINK_ETHERNET, payload[8:])
    if GENEVE_PORT in (sport, dport) and len(payload) >= 8 and not payload[0] & 0xC0 and not payload[1] & 0x3F:
        options = (payload[0] & 0x3F) * 4
        return _by_ethertype("geneve", int.from_bytes(payload[2:4]), payload[8 + options :])
    if TEREDO_PORT in (sport, dport):
        return _teredo(payload)
    return None


def _describe(inner: Inner) -> str:
    frame = inner.frame[14:] if inner.linktype == LINK_ETHERNET else inner.frame
    if frame[:1] and frame[0] >> 4 == 4 and len(frame) >= 20:
        return f"{ipaddress.IPv4Address(frame[12:16])} -> {ipaddress.IPv4Address(frame[16:20])}"
    if frame[:1] and frame[0] >> 4 == 6 and len(frame) >= 40:
        return f"{ipaddress.IPv6Address(frame[8:24])} -> {ipaddress.IPv6Address(frame[24:40])}"
    return f"{len(inner.frame)} bytes"


def detect(view: FlowView) -> Result:
    """A UDP flow on the VXLAN, GENEVE or Teredo port whose first datagram carries a packet of that shape."""
    meta = view.meta
    if meta.transport is not Transport.UDP or not UDP_PORTS & {meta.sport, meta.dport}:
        return None
    first = (view.client_datagrams or view.server_datagrams)[:1]
    if not first:
        return None if view.complete else MORE
    inner = unwrap_udp(meta.sport, meta.dport, first[0])
    if inner is None:
        return None
    return Finding(Category.TUNNEL, inner.kind, NAME, evidence(f"{inner.kind} carrying {_describe(inner)}"))
