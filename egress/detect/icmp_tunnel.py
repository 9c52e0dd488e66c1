"""ICMP tunnels: data carried in the payload of echo requests and replies, or of other ICMP messages.

Entry point: `detect` (a `FlowView` detector for ICMP and ICMPv6 flows). Echo messages (ICMP types 8/0, RFC 792;
ICMPv6 128/129, RFC 4443) are judged by their payloads as below. Messages with a fixed size carry nothing after
it: timestamp 13/14 (12 bytes), information request/reply 15/16 and router solicitation 10 (nothing after the
8-byte header; RFC 792, RFC 1256 §3.1), address mask 17/18 (4 bytes, RFC 950); ICMPv6 router solicitation 133
carries only well-formed options (RFC 4861 §4.1): anything more is covert data (``icmp-covert``). Error messages
quote the offending IP header by design (RFC 792 "Internet Header + 64 bits of Original Data Datagram"), so an
IP header there is not a tunnel; a quote that does not start with one is covert data.

What an ordinary ping sends (so it stays clean):

- Linux iputils and BSD/macOS ping: 56 bytes by default, a ``struct timeval`` (8 or 16 bytes) then bytes whose
  value is their offset (0x08.. or 0x10..0x37) (iputils ping/ping_common.c and FreeBSD sbin/ping/ping.c fill
  ``for (i = TIMEVAL_LEN; i < datalen; ++i) *datap++ = i``); ``-p`` repeats a pattern of up to 16 bytes.
- Windows ping.exe: 32 bytes ``abcdefghijklmnopqrstuvwabcdefghi`` (the alphabet to ``w``, repeated).
- Probes that send nothing or a constant fill (nmap, hping3, fping send zeros).

What a tunnel sends:

- ptunnel: a header starting with the magic 0xD5200880 (PingTunnel ptunnel.h, ``kPing_tunnel_magic``);
  ptunnel-ng keeps the header (``ping_tunnel_pkt_t`` in src/pkt.h: magic, destination address and port, state,
  ack, data length, sequence, id; all network order) but its magic is 0xDEADC0DE by default and set by ``-m``,
  so the header is recognised by its structure: the length field equals the data that follows, and the state
  is one of the five protocol states with exactly one of the user/proxy flags (bits 30, 31) set.
- Hans: a header starting with the magic ``hanc`` (client) or ``hans`` (server) (hans src/client.cpp,
  src/server.cpp, ``Worker::TunnelHeader::Magic``).
- icmptunnel, icmptx and similar: a whole IPv4 or IPv6 packet as the echo data (icmptunnel README: "tunnels IP
  traffic in ICMP echo"); we check the version, the length field and (IPv4) the header checksum.
- Anything else that is neither an OS ping pattern nor a fill: one payload larger than `LARGE` or with
  near-random entropy (no ping sends random bytes; probes that do, such as ``nmap --data-length``, send data
  too), or several payloads that differ from each other (in size or content).

An OS ping's first 16 bytes are its send time (``struct timeval``: little-endian seconds in 2000-2100 and
microseconds), or at most 8 bytes (a 32-bit timeval, FreeBSD's ``tv32``, a counter) then zeros or the pattern:
data hidden in a 16-byte "timestamp" makes the payload "other". What still fits is 8 bytes per echo; the
firewall drops echo anyway (docs/security.md).
"""

from __future__ import annotations

import math
import struct
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
"""Unexplained payloads needed before their differences are judged."""
DISTINCT_SIZES = 3
"""Distinct unexplained payloads in one flow (size or content) that make a tunnel (a ping repeats itself)."""
ENTROPY_MIN_LEN = 64
ENTROPY_SHARE = 0.8
"""Entropy, as a share of the most a payload of its length can have, that marks encrypted or compressed data."""
PING_ONLY_GIVE_UP = 8
"""After this many ordinary pings and nothing else, the flow is decided clean."""
LARGE = 256
"""An echo payload this long that is no ping pattern is data: no OS ping sends such a payload by default."""
_EPOCH: Final = range(946_684_800, 4_102_444_800)
"""Send times an OS ping writes: 2000-01-01 to 2100-01-01."""
_PTUNNEL_STATES: Final = range(5)
"""ptunnel's kProxy_start, kProto_ack, kProto_data, kProto_close, kProto_authenticate (ptunnel.h)."""
_PTUNNEL_FLAGS: Final = frozenset({1 << 30, 1 << 31})
"""kUser_flag, kProxy_flag: one of them is set on every packet."""
_FIXED: Final = {13: 12, 14: 12, 15: 0, 16: 0, 17: 4, 18: 4, 10: 0}
"""ICMP types whose messages carry exactly this many bytes after the 8-byte header."""
_ERRORS: Final = frozenset({3, 4, 5, 11, 12, 256 + 1, 256 + 2, 256 + 3, 256 + 4})
"""Error messages (ICMP 3, 4, 5, 11, 12; ICMPv6 1-4 as 256 + type): they quote an IP packet."""
_ROUTER_SOLICITATION6: Final = 256 + 133


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


def _ptunnel_header(payload: bytes) -> bool:
    """Whether the payload is a ptunnel/ptunnel-ng packet whatever its magic (see the module docstring)."""
    if len(payload) < 28:
        return False
    _magic, _ip, port, state, _ack, length = struct.unpack_from("!6I", payload)
    return (
        length == len(payload) - 28
        and port < 65536
        and state & 0x3FFFFFFF in _PTUNNEL_STATES
        and state & 0xC0000000 in _PTUNNEL_FLAGS
    )


def _send_time(head: bytes) -> bool:
    """Whether 16 bytes are what a 64-bit ping writes first: its send time, or at most 8 bytes then zeros."""
    sec, usec = struct.unpack("<qq", head)
    return not any(head[8:]) or (sec in _EPOCH and 0 <= usec < 1_000_000)


def _is_ping(payload: bytes) -> bool:
    """Whether the payload is an OS ping default, a ``-p`` pattern, a constant fill, or too short to carry data."""
    size = len(payload)
    if size <= 16:
        return True
    if payload == _WINDOWS_PATTERN[:size]:
        return True
    if payload == _OFFSET_PATTERN[:size] or payload == payload[:1] * size:
        return True  # the pattern or a fill from the first byte: no send time at all
    tail = payload[16:]
    if (tail == _OFFSET_PATTERN[16:size] or any(tail[p:] == tail[:-p] for p in range(1, 17))) and _send_time(
        payload[:16]
    ):
        return True
    return payload[8:] == _OFFSET_PATTERN[8:size]  # a 32-bit ping: 8 bytes of send time, then the pattern


def _high_entropy(payload: bytes) -> bool:
    size = len(payload)
    if size < ENTROPY_MIN_LEN:
        return False
    bits = -sum(n / size * math.log2(n / size) for n in Counter(payload).values())
    return bits >= ENTROPY_SHARE * math.log2(min(size, 256))


def classify(payload: bytes) -> str:
    """Label one echo payload: ``ptunnel``, ``hans``, ``ip-over-icmp``, ``ping`` or ``other``."""
    if payload.startswith(PTUNNEL_MAGIC) or _ptunnel_header(payload):
        return "ptunnel"
    if payload[:4] in HANS_MAGICS:
        return "hans"
    if _carries_ip(payload):
        return "ip-over-icmp"
    if _is_ping(payload):
        return "ping"
    return "other"


def _covert(kind: int, payload: bytes) -> bool:
    """Whether a non-echo message of type ``kind`` carries more than its type allows (module docstring)."""
    if kind in _FIXED:
        return len(payload) > _FIXED[kind]
    if kind in _ERRORS:
        return bool(payload) and payload[0] >> 4 not in (4, 6)
    if kind == _ROUTER_SOLICITATION6:
        offset = 0
        while offset + 2 <= len(payload) and payload[offset + 1]:
            offset += payload[offset + 1] * 8
        return offset != len(payload)
    return False


def _non_echo(view: FlowView) -> Result:
    """A flow of other ICMP messages: covert data in any of them. Types pair with payloads only when one side
    sent everything (the drop logger's flows, which are all the sandbox's)."""
    if view.server_datagrams or len(view.icmp_types) != len(view.client_datagrams):
        return None
    for kind, payload in zip(view.icmp_types, view.client_datagrams, strict=True):
        if kind not in ECHO_TYPES and _covert(kind, payload):
            what = f"type {kind - 256 if kind >= 256 else kind}{' (ICMPv6)' if kind >= 256 else ''}"
            text = f"{what} with {len(payload)} bytes of data: ".encode() + payload[:32]
            return Finding(Category.TUNNEL, "icmp-covert", DETECTOR, evidence(text))
    return None if view.complete else MORE


def detect(view: FlowView) -> Result:
    """Find an ICMP tunnel in an ICMP flow's payloads: echo data, or data in messages that carry none."""
    if view.meta.transport is not Transport.ICMP:
        return None
    if view.icmp_types and not all(kind in ECHO_TYPES for kind in view.icmp_types):
        return _non_echo(view)
    others: list[bytes] = []
    pings = 0
    for payload in (*view.client_datagrams, *view.server_datagrams):
        label = classify(payload)
        if label == "ping":
            pings += 1
        elif label == "other":
            others.append(payload)
            if len(payload) >= LARGE or _high_entropy(payload):
                why = f"{len(payload)}-byte echo payload that no ping sends: ".encode()
                return Finding(Category.TUNNEL, "icmp-tunnel", DETECTOR, evidence(why + payload[:32]))
        else:
            protocol = "icmp-" + label if label != "ip-over-icmp" else label
            return Finding(Category.TUNNEL, protocol, DETECTOR, evidence(payload[:48]))
    if len(others) >= OTHER_NEEDED:
        distinct = len(set(others))
        if distinct >= DISTINCT_SIZES:
            summary = f"{len(others)} non-ping payloads, {distinct} distinct: ".encode()
            return Finding(Category.TUNNEL, "icmp-tunnel", DETECTOR, evidence(summary + others[0][:32]))
    if not others and pings >= PING_ONLY_GIVE_UP:
        return None
    return None if view.complete else MORE
