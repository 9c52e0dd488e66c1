"""Capture files to findings: frames → segments → flows (TCP reassembled per direction) → detectors.

Owns the flow table. Each flow is inspected until the detectors decide; from then on its packets cost one
dictionary lookup (the table maps both directions' keys to the same entry, and a decided flow to `_DONE`).
Memory stays bounded: the table is kept in two generations by capture time, and a flow idle for a whole
generation is closed (given a last look by the detectors) and dropped.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final

from egress.capture.packet import ECHO_REPLY, ECHO_REQUEST, ICMP, TCP, UDP, Defragmenter, Malformed, decode
from egress.capture.reader import CaptureError, read_batches
from egress.capture.reassembly import TcpStream
from egress.detect.base import Finding, FlowMeta, Transport
from egress.detect.engine import FlowInspector
from egress.detect.registry import DetectorSet

IDLE_SECONDS: Final = 120.0
"""Capture-time length of a table generation: a flow idle this long (up to twice it) is closed."""
MAX_TABLE_ENTRIES: Final = 1 << 20
"""A generation holding more keys than this is rotated early, whatever the clock says."""

_SYN: Final = 0x02
_ACK: Final = 0x10
_FIN_RST: Final = 0x05
_DNS_PORT: Final = 53
_PORTS: Final = struct.Struct(">HH")
_TRANSPORTS: Final = {TCP: Transport.TCP, UDP: Transport.UDP, ICMP: Transport.ICMP}


@dataclass(frozen=True, slots=True)
class FlowFinding:
    """A finding tied to the flow and capture it came from."""

    file: str
    finding: Finding
    meta: FlowMeta
    ts: float
    """Capture time of the flow's first packet."""


@dataclass(slots=True)
class FileStats:
    path: str
    packets: int = 0
    skipped: int = 0
    """Frames that claimed to be IP but did not decode (counted, never fatal)."""
    flows: int = 0
    findings: int = 0
    error: str | None = None
    """Why the file could not be read to its end, if it could not."""
    peak_entries: int = 0
    """Most flow-table entries (two per flow) held at once, measured at each generation change."""
    skipped_at: list[int] = field(default_factory=list)
    """Packet indexes (1-based) of the first few skipped frames."""


class _Flow:
    __slots__ = ("client", "closing", "cport", "inspector", "meta", "streams", "ts")

    def __init__(self, meta: FlowMeta, client: bytes, cport: int, inspector: FlowInspector, ts: float) -> None:
        self.meta = meta
        self.client = client
        self.cport = cport
        self.inspector = inspector
        self.ts = ts
        self.streams: tuple[TcpStream, TcpStream] | None = None
        self.closing = 0


_DONE: Final = object()
_Entry = _Flow | object


def _address(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


class Scanner:
    """Scans capture files with one detector set. Not thread-safe; one instance per worker."""

    def __init__(self, detectors: DetectorSet, idle_seconds: float = IDLE_SECONDS) -> None:
        self.detectors = detectors
        self.idle_seconds = idle_seconds

    def scan(self, path: str, stats: FileStats, progress: Callable[[int], None] | None = None) -> Iterator[FlowFinding]:
        """Yield the findings of one capture as they are made; fill ``stats`` as it goes."""
        # Tables per transport, keyed by the raw bytes src+dst+sport+dport (both directions of a flow are
        # entered), in two generations: `current` and `previous`.
        current: dict[int, dict[bytes, _Entry]] = {TCP: {}, UDP: {}, ICMP: {}}
        previous: dict[int, dict[bytes, _Entry]] = {TCP: {}, UDP: {}, ICMP: {}}
        tcp_table = current[TCP]
        udp_table = current[UDP]
        defrag = Defragmenter()
        dns = self.detectors.dns_tracker()
        rotate_at: float | None = None
        packets = 0
        try:
            for batch in read_batches(path):
                if progress is not None:
                    progress(len(batch))
                for ts, linktype, frame in batch:
                    packets += 1
                    if (
                        linktype == 1
                        and len(frame) >= 54
                        and frame[14] == 0x45
                        and frame[12] == 8
                        and frame[13] == 0
                        and not frame[20] & 0x3F
                        and not frame[21]
                    ):
                        # Fast path for the common frame (Ethernet, IPv4 without options or fragments): for a decided
                        # flow it costs one slice and one lookup. Everything else takes the full decode below.
                        if frame[23] == TCP:
                            entry = tcp_table.get(frame[26:38])
                            if entry is _DONE:
                                if frame[47] & 0x12 != _SYN:
                                    continue
                            elif (
                                entry is not None
                                and not frame[47] & 0x07  # no SYN, FIN or RST
                                and ((frame[16] << 8) | frame[17]) == 20 + ((frame[46] >> 4) << 2)
                            ):
                                continue  # a bare ACK of a flow being inspected: nothing to reassemble
                        elif frame[23] == UDP and udp_table.get(frame[26:38]) is _DONE:
                            continue
                    try:
                        segment = decode(linktype, frame, ts, defrag)
                    except (Malformed, IndexError):
                        stats.skipped += 1
                        if len(stats.skipped_at) < 5:
                            stats.skipped_at.append(packets)
                        continue
                    if segment is None:
                        continue
                    proto, src, dst, sport, dport, payload, flags, seq = segment
                    ports = _PORTS.pack(sport, dport)
                    key = src + dst + ports
                    table = current[proto]
                    entry = table.get(key)
                    if entry is _DONE and not (flags & _SYN and proto == TCP and not flags & _ACK):
                        continue
                    if rotate_at is None:
                        rotate_at = ts + self.idle_seconds
                    elif ts >= rotate_at or len(table) > MAX_TABLE_ENTRIES:
                        held = sum(map(len, current.values())) + sum(map(len, previous.values()))
                        stats.peak_entries = max(stats.peak_entries, held)
                        for old in previous.values():
                            yield from self._close_all(path, old, stats)
                        previous, current = current, {TCP: {}, UDP: {}, ICMP: {}}
                        tcp_table, udp_table, table = current[TCP], current[UDP], current[proto]
                        rotate_at = ts + self.idle_seconds
                        entry = None
                    if proto == UDP and (sport == _DNS_PORT or dport == _DNS_PORT) and payload:
                        client = src if dport == _DNS_PORT else dst
                        found = dns.observe(_address(client), payload)
                        if found is not None:
                            meta = FlowMeta(Transport.UDP, _address(src), sport, _address(dst), dport)
                            if dport != _DNS_PORT:
                                meta = FlowMeta(Transport.UDP, meta.dst, dport, meta.src, sport)
                            stats.findings += 1
                            yield FlowFinding(path, found, meta, ts)
                        continue
                    reverse = dst + src + ports[2:] + ports[:2]
                    if entry is None:
                        entry = previous[proto].pop(key, None)
                        if entry is not None:
                            table[key] = entry
                            table[reverse] = previous[proto].pop(reverse, entry)
                    if entry is None or entry is _DONE:
                        if proto == ICMP and flags not in (ECHO_REQUEST, ECHO_REPLY):
                            continue
                        flow = self._new_flow(proto, src, sport, dst, dport, flags, ts)
                        stats.flows += 1
                        table[key] = table[reverse] = flow
                    else:
                        assert isinstance(entry, _Flow)
                        flow = entry
                    from_client = src == flow.client and sport == flow.cport
                    inspector = flow.inspector
                    if proto == TCP:
                        streams = flow.streams
                        assert streams is not None
                        stream = streams[0] if from_client else streams[1]
                        if flags & _SYN:
                            stream.syn(seq)
                        if payload:
                            data = stream.add(seq, payload)
                            if data:
                                inspector.feed_stream(from_client, data)
                        if flags & _FIN_RST and not inspector.done:
                            flow.closing += 1 if flags & 0x01 else 2
                            if flow.closing >= 2:
                                inspector.close()
                    elif proto == UDP:
                        inspector.feed_datagram(from_client, payload)
                    elif flags in (ECHO_REQUEST, ECHO_REPLY):
                        inspector.feed_datagram(from_client, payload, flags)
                    if inspector.done:
                        table[key] = table[reverse] = _DONE
                        if inspector.finding is not None:
                            stats.findings += 1
                            yield FlowFinding(path, inspector.finding, flow.meta, flow.ts)
        except CaptureError as exc:
            stats.error = str(exc)
        finally:
            stats.packets = packets
        for tables in (previous, current):
            for old in tables.values():
                yield from self._close_all(path, old, stats)

    def _new_flow(self, proto: int, src: bytes, sport: int, dst: bytes, dport: int, flags: int, ts: float) -> _Flow:
        client, cport, server, sport_ = src, sport, dst, dport
        if proto == TCP:
            syn_ack = flags & _SYN and flags & _ACK
            if syn_ack or (not flags & _SYN and sport < dport):
                # a SYN-ACK comes from the server; mid-connection, the ephemeral (higher) port is the client's
                client, cport, server, sport_ = dst, dport, src, sport
        elif proto == UDP:
            if sport < 1024 <= dport:  # a reply seen before its request
                client, cport, server, sport_ = dst, dport, src, sport
        elif flags == ECHO_REPLY:
            client, server = dst, src
        meta = FlowMeta(_TRANSPORTS[proto], _address(client), cport, _address(server), sport_)
        detectors = self.detectors.for_transport(meta.transport)
        flow = _Flow(meta, client, cport, FlowInspector(meta, detectors), ts)
        if proto == TCP:
            flow.streams = (TcpStream(), TcpStream())
        return flow

    @staticmethod
    def _close_all(path: str, table: dict[bytes, _Entry], stats: FileStats) -> Iterator[FlowFinding]:
        seen: set[int] = set()
        for entry in table.values():
            if entry is _DONE or id(entry) in seen:
                continue
            assert isinstance(entry, _Flow)
            seen.add(id(entry))
            finding = entry.inspector.close()
            if finding is not None:
                stats.findings += 1
                yield FlowFinding(path, finding, entry.meta, entry.ts)
        table.clear()
