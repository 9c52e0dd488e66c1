"""Test helpers that drive a detector the way the engine does, including every split of a fixture."""

from __future__ import annotations

from collections.abc import Iterator

from egress.detect.base import Detector, Finding, FlowMeta, Transport
from egress.detect.engine import FlowInspector

META = FlowMeta(Transport.TCP, "192.0.2.1", 40000, "198.51.100.7", 3333)


def meta(dport: int = 3333, transport: Transport = Transport.TCP, sport: int = 40000) -> FlowMeta:
    return FlowMeta(transport, "192.0.2.1", sport, "198.51.100.7", dport)


def feed_stream(
    detector: Detector, client: bytes, server: bytes = b"", flow: FlowMeta = META, close: bool = True
) -> Finding | None:
    """Feed the whole client bytes, then the server bytes, then close; return the finding."""
    inspector = FlowInspector(flow, (detector,))
    inspector.feed_stream(True, client)
    inspector.feed_stream(False, server)
    return inspector.close() if close else inspector.finding


def splits(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    for offset in range(len(data) + 1):
        yield data[:offset], data[offset:]


def feed_every_split(
    detector: Detector, client: bytes, server: bytes = b"", flow: FlowMeta = META
) -> list[Finding | None]:
    """Feed the client bytes split at every offset (server bytes whole, interleaved after the first part).

    Returns one result per offset; a correct detector gives the same answer for each.
    """
    results: list[Finding | None] = []
    for head, tail in splits(client):
        inspector = FlowInspector(flow, (detector,))
        inspector.feed_stream(True, head)
        inspector.feed_stream(True, tail)
        inspector.feed_stream(False, server)
        results.append(inspector.close())
    return results


def feed_datagrams(
    detector: Detector,
    datagrams: list[tuple[bool, bytes]],
    flow: FlowMeta,
    icmp_types: list[int] | None = None,
) -> Finding | None:
    """Feed (from_client, payload) datagrams in order, then close."""
    inspector = FlowInspector(flow, (detector,))
    for index, (from_client, payload) in enumerate(datagrams):
        icmp_type = icmp_types[index] if icmp_types is not None else None
        inspector.feed_datagram(from_client, payload, icmp_type)
    return inspector.close()
