"""The fields of an attempt record derived from its others, for the tools operators already run: the flow's
Community ID (Zeek, Suricata, Elastic), the time in RFC 3339, a severity, and a stable signature (as eve.json
alerts carry). Pure functions of plain values; `egress.record.schema` fills its derived fields with them, so a
record read from Redis that was written before they existed has them too, and they never disagree with the fields
they come from (docs/records.md, "Derived fields").
"""

from __future__ import annotations

import functools
import math
import time
import zlib
from typing import Final

from egress.detect.ipproto import NAMES
from egress.record.community_id import ICMP, ICMP6, TCP, UDP, community_id

SEVERITIES: Final = ("high", "medium", "low")
"""Most to least urgent (eve.json's alert severity 1, 2, 3)."""
_HIGH: Final = frozenset({"mining", "tunnel", "dns-tunnel"})
"""Mining or data leaving through a tunnel: what the boundary exists to stop."""
_MEDIUM: Final = frozenset(
    {
        "crypto-node",
        "name-address-mismatch",
        "domain-fronting",
        "spoofed-source",
        "tls-no-sni",
        "dns-answer",
        "dns-malformed",
    }
)
"""An evasion tried (a spoofed name or source, fronting, a rebinding answer, a query built to confuse), or a
crypto node. Every other reason (not allowlisted, refused, dropped by the firewall...) is ``low``."""
GENERATOR_ID: Final = 0x6567
"""eve.json's ``alert.gid`` for egress's signatures ("eg"): a generator of its own, so that a signature id never
reads as one of a Suricata rule set's (those have gid 1)."""
_PROTOCOL_NUMBERS: Final = {name: number for number, name in NAMES.items()}


def severity(category: str, reason: str) -> str:
    """``high``, ``medium`` or ``low`` for a record of this category and reason."""
    if category in _HIGH or reason in _HIGH:
        return "high"
    return "medium" if category in _MEDIUM or reason in _MEDIUM else "low"


def signature(detector: str, protocol: str, reason: str) -> str:
    """What matched, as a name: ``<detector>/<protocol>/<reason>`` for a detector's finding (``stratum/stratum-v1/
    mining``), ``policy/<reason>`` when the policy alone decided (whatever the transport)."""
    return f"policy/{reason}" if detector == "policy" else f"{detector}/{protocol}/{reason}"


@functools.lru_cache(maxsize=1024)
def signature_id(name: str) -> int:
    """A number for a `signature`, the same in every egress version and on every gateway (eve.json's
    ``signature_id``, under `GENERATOR_ID`): the name's CRC-32 (1 for the one name whose CRC is 0). A new detector
    gets its own without a table to keep; tests/record/test_derived.py checks that the signatures egress can make
    do not collide."""
    return zlib.crc32(name.encode()) or 1


MAX_TS: Final = 253402300800.0
"""The first second RFC 3339 cannot write (year 10000)."""


def rfc3339(ts: float) -> str:
    """``ts`` as an RFC 3339 UTC time with microseconds (``2026-11-29T21:04:25.123456Z``)."""
    seconds = math.floor(ts)
    micros = min(round((ts - seconds) * 1_000_000), 999_999)  # no carry into the next second: < 1 µs off
    day = time.gmtime(seconds)  # a tuple from C: several times cheaper than a datetime and strftime
    return (
        f"{day.tm_year:04d}-{day.tm_mon:02d}-{day.tm_mday:02d}T{day.tm_hour:02d}:{day.tm_min:02d}:{day.tm_sec:02d}"
        f".{micros:06d}Z"
    )


def protocol_number(transport: str, protocol: str, dst: str) -> int | None:
    """The IP protocol number of a record's flow, or None when the record does not say it."""
    if transport == "tcp":
        return TCP
    if transport == "udp":
        return UDP
    if transport == "icmp":
        return ICMP6 if ":" in dst else ICMP
    if protocol.startswith("ip-") and protocol[3:].isdigit():
        return int(protocol[3:])
    return _PROTOCOL_NUMBERS.get(protocol)


ECHO_REQUEST: Final = {ICMP: 8, ICMP6: 128}


def flow_id(src: str, sport: int, dst: str, dport: int, transport: str, protocol: str) -> str:
    """The record's Community ID, or ``""`` when its flow cannot be told (no source address: a count of dropped
    queries; an IP protocol without a number). An ICMP record keeps no message type (its ports are 0, or an echo
    identifier): its ID is that of an echo exchange (type 8, ICMPv6 128), what ICMP that egress records nearly
    always is."""
    proto = protocol_number(transport, protocol, dst)
    if proto is None:
        return ""
    if proto in ECHO_REQUEST:
        sport, dport = ECHO_REQUEST[proto], 0
    try:
        return community_id(src, dst, proto, sport, dport)
    except ValueError:
        return ""
