"""Link-layer frames to transport segments: Ethernet (802.1Q/802.1ad), Linux cooked v1/v2, raw IP, BSD loopback;
IPv4 and IPv6 (extension headers, fragments); TCP, UDP, ICMP and ICMPv6; with ``any_protocol``, every other IP
protocol too (GRE, IPIP, SCTP...: the drop logger records them all).

Pure byte slicing, no per-layer objects: this runs once per packet. Fragments are held by `Defragmenter` until
the datagram is whole. A frame that is not IP (ARP, LLDP...) decodes to ``None``; a frame that claims to be IP but
does not add up raises `Malformed`, which the scanner counts and skips.
"""

from __future__ import annotations

from typing import Final, NamedTuple

TCP: Final = 6
UDP: Final = 17
ICMP: Final = 1
ICMP6: Final = 58

LINK_NULL: Final = 0
LINK_ETHERNET: Final = 1
LINK_RAW: Final = 101
LINK_RAW_OPENBSD: Final = 12
LINK_RAW_BSDOS: Final = 14
LINK_LOOP: Final = 108
LINK_SLL: Final = 113
LINK_IPV4: Final = 228
LINK_IPV6: Final = 229
LINK_SLL2: Final = 276

SUPPORTED_LINKTYPES: Final = frozenset(
    {
        LINK_NULL,
        LINK_ETHERNET,
        LINK_RAW,
        LINK_RAW_OPENBSD,
        LINK_RAW_BSDOS,
        LINK_LOOP,
        LINK_SLL,
        LINK_IPV4,
        LINK_IPV6,
        LINK_SLL2,
    }
)

ECHO_REQUEST: Final = 8
ECHO_REPLY: Final = 0
FIN: Final = 0x01
SYN: Final = 0x02
RST: Final = 0x04
ACK: Final = 0x10
"""TCP flags (RFC 9293 §3.1), as they appear in `Segment.flags`."""
_ICMP6_AS_ICMP4: Final = {128: ECHO_REQUEST, 129: ECHO_REPLY}
"""ICMPv6 echo types mapped onto ICMPv4's so detectors see one numbering; other ICMPv6 types become 256 + type."""
_IPV6_EXTENSIONS: Final = frozenset({0, 43, 60, 135, 139, 140})
AH: Final = 51
"""IPv6 authentication header: an extension header whose length counts 4-byte units (RFC 4302 §2.2)."""
_PORTED: Final = frozenset({33, 132, 136})
"""DCCP, SCTP and UDP-Lite: transports whose first four bytes are the source and destination ports."""
_FRAGMENT_TTL: Final = 30.0
_FRAGMENT_MAX_DATAGRAMS: Final = 1024


class Malformed(ValueError):
    """A frame whose IP or transport headers are inconsistent."""


class Segment(NamedTuple):
    """One transport-layer unit. ``sport``/``dport`` are the ICMP echo identifier for ICMP echo, the ports for
    SCTP, DCCP and UDP-Lite, 0 for other protocols (whose ``payload`` is everything after the IP headers)."""

    proto: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    payload: bytes
    flags: int
    """TCP flags; for ICMP, the ICMP type."""
    seq: int


class Defragmenter:
    """Reassembles fragmented IPv4/IPv6 datagrams; bounded in datagrams held and in age."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: dict[tuple[bytes, bytes, int, int], tuple[float, dict[int, bytes], int]] = {}

    def add(self, key: tuple[bytes, bytes, int, int], ts: float, offset: int, more: bool, data: bytes) -> bytes | None:
        """Add one fragment; return the whole payload once every piece is there."""
        entry = self._pending.get(key)
        if entry is None:
            if len(self._pending) >= _FRAGMENT_MAX_DATAGRAMS:
                self._expire(ts)
            entry = (ts, {}, -1)
        first_ts, pieces, total = entry
        pieces[offset] = data
        if not more:
            total = offset + len(data)
        self._pending[key] = (first_ts, pieces, total)
        if total < 0:
            return None
        assembled = bytearray()
        for piece_offset in sorted(pieces):
            if piece_offset > len(assembled):
                return None
            assembled[piece_offset : piece_offset + len(pieces[piece_offset])] = pieces[piece_offset]
        if len(assembled) < total:
            return None
        del self._pending[key]
        return bytes(assembled[:total])

    def _expire(self, now: float) -> None:
        stale = [key for key, (ts, _, _) in self._pending.items() if now - ts > _FRAGMENT_TTL]
        for key in stale or list(self._pending)[: _FRAGMENT_MAX_DATAGRAMS // 2]:
            del self._pending[key]


def decode(linktype: int, frame: bytes, ts: float, defrag: Defragmenter, any_protocol: bool = False) -> Segment | None:
    """Decode one frame. ``None`` for frames that carry no IP or an incomplete fragment, and (unless
    ``any_protocol``) for IP protocols other than TCP, UDP, ICMP and ICMPv6."""
    if linktype == LINK_ETHERNET:
        ethertype = (frame[12] << 8) | frame[13] if len(frame) >= 14 else 0
        offset = 14
        while ethertype in (0x8100, 0x88A8, 0x9100) and len(frame) >= offset + 4:
            ethertype = (frame[offset + 2] << 8) | frame[offset + 3]
            offset += 4
    elif linktype == LINK_SLL:
        ethertype = (frame[14] << 8) | frame[15] if len(frame) >= 16 else 0
        offset = 16
    elif linktype == LINK_SLL2:
        ethertype = (frame[0] << 8) | frame[1] if len(frame) >= 20 else 0
        offset = 20
    elif linktype in (LINK_NULL, LINK_LOOP):
        if len(frame) < 4:
            return None
        family = int.from_bytes(frame[:4], "big" if linktype == LINK_LOOP else "little")
        if family > 0xFFFF:  # written on a host of the other byte order
            family = int.from_bytes(frame[:4], "little" if linktype == LINK_LOOP else "big")
        ethertype = 0x0800 if family == 2 else 0x86DD if family in (10, 24, 28, 30) else 0
        offset = 4
    elif linktype in (LINK_RAW, LINK_RAW_OPENBSD, LINK_RAW_BSDOS, LINK_IPV4, LINK_IPV6):
        version = frame[0] >> 4 if frame else 0
        ethertype = 0x0800 if version == 4 else 0x86DD if version == 6 else 0
        offset = 0
    else:
        return None
    if ethertype == 0x0800:
        return _ipv4(frame, offset, ts, defrag, any_protocol)
    if ethertype == 0x86DD:
        return _ipv6(frame, offset, ts, defrag, any_protocol)
    return None


def _ipv4(frame: bytes, offset: int, ts: float, defrag: Defragmenter, any_protocol: bool) -> Segment | None:
    if len(frame) < offset + 20 or frame[offset] >> 4 != 4:
        raise Malformed("short or non-IPv4 header")
    ihl = (frame[offset] & 0x0F) * 4
    total = (frame[offset + 2] << 8) | frame[offset + 3]
    if ihl < 20 or total < ihl:
        raise Malformed("bad IPv4 header length")
    end = min(offset + total, len(frame)) if total else len(frame)  # total 0: TSO capture
    proto = frame[offset + 9]
    src = frame[offset + 12 : offset + 16]
    dst = frame[offset + 16 : offset + 20]
    frag = (frame[offset + 6] << 8) | frame[offset + 7]
    body = frame[offset + ihl : end]
    if frag & 0x3FFF:
        ident = (frame[offset + 4] << 8) | frame[offset + 5]
        whole = defrag.add((src, dst, ident, proto), ts, (frag & 0x1FFF) * 8, bool(frag & 0x2000), body)
        if whole is None:
            return None
        body = whole
    return _transport(proto, src, dst, body, any_protocol)


def _ipv6(frame: bytes, offset: int, ts: float, defrag: Defragmenter, any_protocol: bool) -> Segment | None:
    if len(frame) < offset + 40 or frame[offset] >> 4 != 6:
        raise Malformed("short or non-IPv6 header")
    plen = (frame[offset + 4] << 8) | frame[offset + 5]
    proto = frame[offset + 6]
    src = frame[offset + 8 : offset + 24]
    dst = frame[offset + 24 : offset + 40]
    body = frame[offset + 40 : offset + 40 + plen] if plen else frame[offset + 40 :]
    fragment: tuple[int, bool, int] | None = None
    while proto in _IPV6_EXTENSIONS or proto == 44 or (proto == AH and any_protocol):
        if len(body) < 8:
            raise Malformed("truncated IPv6 extension header")
        if proto == 44:
            field = (body[2] << 8) | body[3]
            fragment = (field & 0xFFF8, bool(field & 1), int.from_bytes(body[4:8], "big"))
            proto, body = body[0], body[8:]
        elif proto == AH:  # what it authenticates is the protocol that counts (the kernel's l4proto says the same)
            proto, body = body[0], body[(body[1] + 2) * 4 :]
        else:
            proto, body = body[0], body[(body[1] + 1) * 8 :]
    if fragment is not None:
        frag_offset, more, ident = fragment
        if frag_offset or more:
            whole = defrag.add((src, dst, ident, proto), ts, frag_offset, more, body)
            if whole is None:
                return None
            body = whole
    return _transport(proto, src, dst, body, any_protocol)


def _transport(proto: int, src: bytes, dst: bytes, body: bytes, any_protocol: bool = False) -> Segment | None:
    if proto == TCP:
        if len(body) < 20:
            raise Malformed("truncated TCP header")
        data_offset = (body[12] >> 4) * 4
        if data_offset < 20:
            raise Malformed("bad TCP data offset")
        return Segment(
            TCP,
            src,
            dst,
            (body[0] << 8) | body[1],
            (body[2] << 8) | body[3],
            body[data_offset:],
            body[13],
            int.from_bytes(body[4:8], "big"),
        )
    if proto == UDP:
        if len(body) < 8:
            raise Malformed("truncated UDP header")
        length = (body[4] << 8) | body[5]
        payload = body[8:length] if length >= 8 else body[8:]
        return Segment(UDP, src, dst, (body[0] << 8) | body[1], (body[2] << 8) | body[3], payload, 0, 0)
    if proto in (ICMP, ICMP6):
        if len(body) < 8:
            raise Malformed("truncated ICMP header")
        ident = (body[4] << 8) | body[5]
        icmp_type = body[0] if proto == ICMP else _ICMP6_AS_ICMP4.get(body[0], 256 + body[0])
        return Segment(ICMP, src, dst, ident, ident, body[8:], icmp_type, 0)
    if not any_protocol:
        return None
    if proto in _PORTED and len(body) >= 4:
        return Segment(proto, src, dst, (body[0] << 8) | body[1], (body[2] << 8) | body[3], body, 0, 0)
    return Segment(proto, src, dst, 0, 0, body, 0, 0)
