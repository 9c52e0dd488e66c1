"""The explicit list of detectors run on each transport, built once from the name lists.

No discovery: adding a detector means adding it to a tuple here. Order matters only for speed and for which
finding a flow gets when two could match: mining before crypto-node (a node RPC stream with a mining method is
mining), protocol detectors before the name detector (the protocol is the stronger evidence).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from egress.detect import (
    binrpc,
    circumvent,
    cryptonode,
    dns,
    encap,
    encrypted,
    icmp_tunnel,
    jsonmining,
    packed,
    pptp,
    proxytunnel,
    ssh,
    stratum2,
    tor,
    upgrade,
    vpn,
    wallet,
    xmlrpc,
)
from egress.detect.base import Category, Detector, Finding, Transport, evidence
from egress.detect.dns_tunnel import DnsTunnelLimits, DnsTunnelTracker
from egress.detect.names import NameLists, make_name_detector
from egress.detect.websocket import make_websocket_detector

MINING: Final[tuple[Detector, ...]] = (
    jsonmining.detect,  # stratum, cryptonote, ethstratum and getwork, in that order, as one detector
    stratum2.detect,
    binrpc.detect,
    xmlrpc.detect,
    packed.detect,
    wallet.detect,
)
"""Pool protocols (binrpc: the same calls in binary RPC encodings; xmlrpc: as XML-RPC, SOAP or other XML; packed:
the names as 7-, 6- or 5-bit characters at any bit offset, unaligned PER; wallet: a Monero payout address in the
client's bytes, whatever the framing, docs/wallets.md); also run on payloads unwrapped from
WebSocket frames and on decrypted TLS."""

STREAM_TUNNELS: Final[tuple[Detector, ...]] = (
    ssh.detect,
    ssh.detect_reverse,
    proxytunnel.detect,
    tor.detect,
    vpn.detect,
    pptp.detect,
    circumvent.detect,
    circumvent.detect_payload,
)

OPAQUE: Final[tuple[Detector, ...]] = (encrypted.detect,)
"""Streams that open fully encrypted: run by the proxy's gate on streams to a network rule's destination that does
not expect ``any`` (egress.proxy.gate.Gate.inspector), after the others (a known protocol is the better finding)."""
OPAQUE_UPGRADING: Final[tuple[Detector, ...]] = (encrypted.detect_upgrading,)
"""The same for a host rule's port, whose stream may upgrade to TLS in band (`encrypted.detect_upgrading`)."""


class DnsObserver(Protocol):
    """Per-scan DNS state: sees every DNS message with the client's address and its time (a capture's own: the
    counters decay by it), may conclude a finding."""

    def observe(self, client: str, message: bytes, now: float) -> Finding | None: ...


@dataclass(frozen=True, slots=True)
class DetectorSet:
    tcp: tuple[Detector, ...]
    udp: tuple[Detector, ...]
    """A UDP flow's detectors in captures and in the drop logger (the engine holds its first datagrams)."""
    icmp: tuple[Detector, ...]
    dns_tracker: Callable[[], DnsObserver]
    """Makes fresh DNS state (one per capture file, or per gateway)."""
    udp_gate: tuple[Detector, ...] = ()
    """`udp` without the pool detectors, for the UDP gate, which runs those on its own window
    (`egress.detect.datagrams.inspect`)."""

    def for_transport(self, transport: Transport) -> tuple[Detector, ...]:
        if transport is Transport.TCP:
            return self.tcp
        if transport is Transport.UDP:
            return self.udp
        return self.icmp


class _NoDns:
    def observe(self, client: str, message: bytes, now: float) -> Finding | None:
        return None


class DnsInspector:
    """DNS tunnel tracking plus name lists on the asked names (a DNS lookup of a pool or a reverse-tunnel
    service). Each (client, finding) is reported once."""

    __slots__ = ("_lists", "_reported", "_tracker")

    def __init__(self, lists: NameLists, limits: DnsTunnelLimits | None = None) -> None:
        self._tracker = DnsTunnelTracker(limits)
        self._lists = lists
        self._reported: set[tuple[str, Finding]] = set()

    def observe(self, client: str, message: bytes, now: float) -> Finding | None:
        # The tracker and the name lists read the header and the questions only: the records are not parsed.
        parsed = dns.parse_questions(message)
        return None if parsed is None else self.observe_message(client, parsed, now)

    def observe_message(self, client: str, parsed: dns.Message, now: float) -> Finding | None:
        """`observe` for a message the caller has parsed already."""
        found = self._tracker.observe_message(client, parsed, now=now) or self._named(parsed)
        if found is None or (client, found) in self._reported:
            return None
        self._reported.add((client, found))
        return found

    @staticmethod
    def long_name(name: str) -> Finding:
        """A name longer than a sandbox's limit: only tunnels need names that long."""
        return Finding(Category.TUNNEL, "dns-tunnel", "dns-limits", evidence(f"{len(name)}-character name {name}"))

    def _named(self, parsed: dns.Message) -> Finding | None:
        for question in parsed.questions:
            hit = self._lists.match(question.name)
            # A lookup of a DoH resolver's name is not itself a tunnel: the name detector judges the connection.
            if hit is not None and hit[2] != "doh":
                list_name, category, protocol = hit
                return Finding(category, protocol, "dns-names", evidence(f"{question.name} on {list_name}"))
        return None


def stream_detectors(lists: NameLists) -> tuple[Detector, ...]:
    """Everything run on a TCP byte stream (also on decrypted TLS and unwrapped WebSocket payloads)."""
    inner = (*MINING, cryptonode.detect, circumvent.detect_payload)
    return (*MINING, cryptonode.detect, *STREAM_TUNNELS, make_websocket_detector(inner), make_name_detector(lists))


def build_detectors(lists: NameLists) -> DetectorSet:
    from egress.detect import datagrams  # it reads `MINING` from here

    names = make_name_detector(lists)
    return DetectorSet(
        # The proxy judges upgrades on the request with its sandbox's `upgrades:` (egress.proxy.mitm.flows); on
        # whole streams (captures) the same judgement runs as a detector, with nothing allowed. First: a flow that
        # asks to switch and then sends Stratum is reported as both (FlowInspector.findings), which needs the
        # tunnel finding made before the mining one ends the inspection.
        tcp=(upgrade.detect, *stream_detectors(lists), encrypted.detect_stream),
        udp=(encap.detect, vpn.detect, datagrams.detect_pool, names),
        icmp=(icmp_tunnel.detect,),
        dns_tracker=lambda: DnsInspector(lists),
        udp_gate=(encap.detect, vpn.detect, names),
    )


__all__ = [
    "DetectorSet",
    "DnsInspector",
    "DnsObserver",
    "build_detectors",
    "stream_detectors",
]
