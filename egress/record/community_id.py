"""The Community ID of a flow, version 1: the flow hash Zeek, Suricata, Elastic and Arkime share, so that an egress
record can be joined with their logs of the same connection.

Specification: github.com/corelight/community-id-spec (README, "Technical details"). SHA-1 over a 2-byte seed,
the two addresses, the IP protocol, one padding byte and, for protocols with ports, the two ports, all in network
byte order, with the endpoints ordered so that both directions of a flow hash alike; base64 with the prefix ``1:``.
ICMP and ICMPv6 use the message type and the type of its counterpart (or the code, for a message without one) as
the ports (Zeek's ICMP4_counterpart). Pure; tests/record/test_community_id.py checks the spec's baseline vectors.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import struct
from typing import Final

ICMP: Final = 1
TCP: Final = 6
UDP: Final = 17
ICMP6: Final = 58
SCTP: Final = 132
_WITH_PORTS: Final = frozenset({ICMP, TCP, UDP, ICMP6, SCTP})

_ICMP4_COUNTERPART: Final = {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 10: 9, 17: 18, 18: 17}
"""Echo, timestamp, information, router solicitation (to advertisement only) and address mask."""
_ICMP6_COUNTERPART: Final = {
    128: 129, 129: 128, 133: 134, 134: 133, 135: 136, 136: 135, 130: 131, 131: 130, 139: 140, 140: 139, 144: 145,
    145: 144,
}  # fmt: skip
"""Echo, router and neighbour discovery, multicast listener, node information, home agent discovery."""


def icmp_ports(proto: int, icmp_type: int, code: int) -> tuple[int, int, bool]:
    """The port equivalents of an ICMP (``proto`` 1) or ICMPv6 (58) message: (type, counterpart type, False), or
    (type, code, True) for a one-way message (which keeps its direction)."""
    table = _ICMP6_COUNTERPART if proto == ICMP6 else _ICMP4_COUNTERPART
    counterpart = table.get(icmp_type)
    return (icmp_type, code, True) if counterpart is None else (icmp_type, counterpart, False)


def _packed(address: str) -> bytes:
    kind = ipaddress.IPv6Address if ":" in address else ipaddress.IPv4Address
    try:
        return kind(address).packed
    except ValueError:
        raise ValueError(f"community id: {address!r} is not an IP address") from None


def community_id(src: str, dst: str, proto: int, sport: int = 0, dport: int = 0, seed: int = 0) -> str:
    """The version 1 Community ID (base64) of a flow from ``src``:``sport`` to ``dst``:``dport`` over IP protocol
    ``proto``. For ICMP and ICMPv6, ``sport`` and ``dport`` are the message's type and code. `ValueError` for an
    address that is not one, two addresses of different families, or a number out of its range."""
    source, destination = _packed(src), _packed(dst)
    if len(source) != len(destination):
        raise ValueError(f"community id: {src} and {dst} are of different address families")
    if not (0 <= proto <= 255 and 0 <= sport <= 65535 and 0 <= dport <= 65535 and 0 <= seed <= 65535):
        raise ValueError(f"community id: protocol {proto}, ports {sport}/{dport} or seed {seed} out of range")
    one_way = False
    if proto in (ICMP, ICMP6):
        sport, dport, one_way = icmp_ports(proto, sport, dport)
    if not one_way and (source, sport) > (destination, dport):
        source, destination, sport, dport = destination, source, dport, sport
    data = struct.pack("!H", seed) + source + destination + struct.pack("!BB", proto, 0)
    if proto in _WITH_PORTS:
        data += struct.pack("!HH", sport, dport)
    return "1:" + base64.b64encode(hashlib.sha1(data, usedforsecurity=False).digest()).decode()
