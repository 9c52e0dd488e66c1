"""ICMP echo tunnels: data carried in the payload of echo requests and replies.

Entry point: `detect` (a `FlowView` detector for ICMP and ICMPv6 flows). Only echo messages are judged
(ICMP types 8/0, RFC 792; ICMPv6 128/129, RFC 4443): error messages quote the offending IP header by design
(RFC 792 "Internet Header + 64 bits of Original Data Datagram"), so an IP header there is not a tunnel.

What an ordinary ping sends (so it stays clean):

- Linux iputils and BSD/macOS ping: 56 bytes by default, a ``struct timeval`` (8 or 16 bytes) then bytes whose
  value is their offset (0x08.. or 0x10..0x37) (iputils ping/ping_common.c and FreeBSD sbin/ping/ping.c fill
  ``for (i = TIMEVAL_LEN; i < datalen; ++i) *datap++ = i``); ``-p`` repeats a pattern of up to 16 bytes.
- Windows ping.exe: 32 bytes ``abcdefghijklmnopqrstuvwabcdefghi`` (the alphabet to ``w``, repeated).
- Probes that send nothing or a constant fill (nmap, hping3, fping send zeros).

What a tunnel sends:

- ptunnel: a header starting with the magic 0xD5200880 (PingTunnel ptunnel.h, ``kPing_tunnel_magic``).
- Hans: a header starting with the magic ``hanc`` (client) or ``hans`` (server) (hans src/client.cpp,
  src/server.cpp, ``Worker::TunnelHeader::Magic``).
- icmptunnel, icmptx and similar: a whole IPv4 or IPv6 packet as the echo data (icmptunnel README: "tunnels IP
  traffic in ICMP echo"); we check the version, the length field and (IPv4) the header checksum.
- Anything else that is neither an OS ping pattern nor a fill: payload sizes that vary within the flow or bytes
  with near-random entropy.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Final

from egress.detect.base import MORE, Category, Finding, FlowView, Result, Transport, evidence

DETECTOR = "icmp_tunnel"

ECHO_TYPES: Final = frozenset({0, 8, 128, 129})
PTUNNEL_MAGIC: Final = bytes.fromhex("d5200880")
HANS_MAGICS: Final = (b"hanc", b"hans")
_OFFSET_PATTERN: Final = bytes(range(256)) * 256
_WINDOWS_PATTERN: Final = b"abcdefghijklmnopqrstuvw" * 2900

OTHER_NEEDED = 4
"""Unexplained payloads needed before sizes and entropy are judged."""
DISTINCT_SIZES = 3
"""Distinct unexplained payload sizes in one flow that make a tunnel (a ping keeps one size)."""
ENTROPY_MIN_LEN = 64
ENTROPY_SHARE = 0.8
"""Entropy, as a share of the most a payload of its length can have, that marks encrypted or compressed data."""
PING_ONLY_GIVE_UP = 8
"""After this many ordinary pings and nothing else, the flow is decided clean."""


def _ipv4_checksum_ok(header: bytes) -> bool:
    total = sum(int.from_bytes(header[i : i + 2]) for i in range(0, len(header), 2))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return total == 0xFFFF


def _carries_ip(payload: bytes) -> bool:
    """Whether the payload is exactly one IPv4 (valid header checksum) or IPv6 packet."""
    if len(payload) < 20:
        return False
    version = payload[0] >> 4
    if version == 4:
        header_len = (payload[0] & 0x0F) * 4
        return (
            header_len >= 20
            and int.from_bytes(payload[2:4]) == len(payload)
            and len(payload) >= header_len
            and _ipv4_checksum_ok(payload[:header_len])
        )
    return version == 6 and len(payload) >= 40 and int.from_bytes(payload[4:6]) + 40 == len(payload)


def _is_ping(payload: bytes) -> bool:
    """Whether the payload is an OS ping default, a ``-p`` pattern, a constant fill, or too short to carry data."""
    size = len(payload)
    if size <= 16:
        return True
    if payload[16:] == _OFFSET_PATTERN[16:size] or payload[8:] == _OFFSET_PATTERN[8:size]:
        return True
    if payload == _WINDOWS_PATTERN[:size]:
        return True
    tail = payload[16:]
    return any(tail[period:] == tail[:-period] for period in range(1, 17))


def _high_entropy(payload: bytes) -> bool:
    size = len(payload)
    if size < ENTROPY_MIN_LEN:
        return False
    bits = -sum(n / size * math.log2(n / size) for n in Counter(payload).values())
    return bits >= ENTROPY_SHARE * math.log2(min(size, 256))


def classify(payload: bytes) -> str:
    """Label one echo payload: ``ptunnel``, ``hans``, ``ip-over-icmp``, ``ping`` or ``other``."""
    if payload.startswith(PTUNNEL_MAGIC):
        return "ptunnel"
    if payload[:4] in HANS_MAGICS:
        return "hans"
    if _carries_ip(payload):
        return "ip-over-icmp"
    if _is_ping(payload):
        return "ping"
    return "other"


def detect(view: FlowView) -> Result:
    """Find an ICMP echo tunnel in an ICMP flow's payloads."""
    if view.meta.transport is not Transport.ICMP:
        return None
    if view.icmp_types and not all(kind in ECHO_TYPES for kind in view.icmp_types):
        return None
    others: list[bytes] = []
    pings = 0
    for payload in (*view.client_datagrams, *view.server_datagrams):
        label = classify(payload)
        if label == "ping":
            pings += 1
        elif label == "other":
            others.append(payload)
        else:
            protocol = "icmp-" + label if label != "ip-over-icmp" else label
            return Finding(Category.TUNNEL, protocol, DETECTOR, evidence(payload[:48]))
    if len(others) >= OTHER_NEEDED:
        sizes = {len(payload) for payload in others}
        noisy = [payload for payload in others if _high_entropy(payload)]
        if len(sizes) >= DISTINCT_SIZES or len(noisy) >= OTHER_NEEDED:
            why = f"{len(others)} non-ping payloads, {len(sizes)} sizes, {len(noisy)} high-entropy: "
            return Finding(Category.TUNNEL, "icmp-tunnel", DETECTOR, evidence(why.encode() + others[0][:32]))
    if not others and pings >= PING_ONLY_GIVE_UP:
        return None
    return None if view.complete else MORE
