"""Capture files to findings: frames → segments → flows (TCP reassembled per direction) → detectors.

Owns the pass over one capture: the fast path that skips a decided flow's frames on their raw bytes, the full
decode of the rest, DNS, and the findings. Each flow is inspected until the detectors decide; from then on its
packets cost one dictionary lookup in the flow table (`egress.flowtable`), which also keeps memory bounded.
docs/scanner-hot-path.md has the why.
"""

from __future__ import annotations

import functools
import socket
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from egress.capture.hot import Fields, Implementation, Records, Step, pure_asked
from egress.capture.hot import implementation as _implementation
from egress.capture.packet import (
    ACK,
    ECHO_REPLY,
    ICMP,
    LINK_ETHERNET,
    SUPPORTED_LINKTYPES,
    SYN,
    TCP,
    UDP,
    Defragmenter,
    Malformed,
    Segment,
    decode,
)
from egress.capture.reader import CaptureError, read_records
from egress.detect import binrpc, encap, ipproto, jsonrpc
from egress.detect.base import Category, Finding, FlowMeta, Transport
from egress.detect.engine import FlowInspector
from egress.detect.registry import DetectorSet
from egress.flowtable import DONE, MAX_TABLE_ENTRIES, Flow, FlowTable, stamp

IDLE_SECONDS: Final = 120.0
"""Capture-time length of a table generation: a flow idle this long (up to twice it) is closed."""

MAX_DEPTH: Final = 3
"""Encapsulations opened inside each other (GRE in IPIP in VXLAN...) before the rest is left as it is."""
MAX_IP_PAIRS: Final = 1 << 16
"""Address pairs of other IP protocols remembered (each reported once) before the memory is cleared."""
ENCAP: Final = object()
"""The flow-table entry of a decided UDP flow that carries packets (VXLAN, GENEVE, Teredo): not `DONE`, so the
fast path hands its frames to the slow path, which opens them and scans what they carry."""

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
    unidentified: int = 0
    """Flows the inspection cap stopped before any detector could rule them out, none of TLS, HTTP or SSH
    (`egress.detect.engine.FlowInspector.unidentified`): not findings, but not shown clean either."""
    findings: int = 0
    error: str | None = None
    """Why the file could not be read to its end, if it could not."""
    peak_entries: int = 0
    """Most flow-table entries (two per flow) held at once, measured at each generation change."""
    skipped_at: list[int] = field(default_factory=list)
    """Packet indexes (1-based) of the first few skipped frames."""
    unsupported: dict[int, int] = field(default_factory=dict)
    """Packets of each link type egress cannot decode (not scanned)."""
    workers: int = 1
    """Processes whose flows the findings come from (`egress.scan_split`: a large file split by flow)."""


@functools.lru_cache(maxsize=4096)
def _address(raw: bytes) -> str:
    # kept for the addresses seen lately: each flow's two and each DNS client's, mostly the same few hosts again
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


class _Pass:
    """One scan of one capture: the fast path over each batch, the full decode and the flows' inspection for the
    frames it does not skip. Findings are collected in `found`, which `Scanner.scan` empties after each batch."""

    __slots__ = (
        "defrag", "detectors", "dns", "flows", "found", "impl", "ip_pairs", "packets", "path", "segment", "stats"
    )  # fmt: skip

    def __init__(self, path: str, stats: FileStats, scanner: Scanner) -> None:
        detectors = scanner.detectors
        self.impl = scanner.impl
        self.segment = scanner.impl.segment
        self.path = path
        self.stats = stats
        self.detectors = detectors
        self.dns = detectors.dns_tracker()
        self.defrag = Defragmenter()
        self.flows = FlowTable(scanner.idle_seconds)
        self.found: list[FlowFinding] = []
        self.packets = 0
        self.ip_pairs: set[bytes] = set()
        """Protocol + addresses of each pair of hosts seen speaking another IP protocol (GRE, IPIP, ESP...)."""

    def sweep(self, records: Records) -> None:
        """The fast path over one chunk: `egress.capture.hot.sweep` (compiled where it is built) passes over the
        records judged on their raw bytes (a decided flow's packet, a bare ACK of a flow being inspected, a frame
        without IP) without making objects of them; each record it stops at goes to `packet` (compiled: `_step`)."""
        if self.impl.step is not None:
            self._step(records, self.impl.step)
            return
        flows = self.flows
        buf, spans, stamps = records.buf, records.spans, records.stamps
        skip = self.impl.sweep
        base = self.packets
        count = len(stamps)
        index = skip(buf, spans, stamps, 0, flows.tcp, flows.udp, DONE, flows.icmp)
        while index < count:
            start = spans[3 * index]
            self.packet(
                stamps[index], spans[3 * index + 2], buf[start : start + spans[3 * index + 1]], base + index + 1
            )
            # a rotation in `packet` replaces the tables: asked for again each time
            index = skip(buf, spans, stamps, index + 1, flows.tcp, flows.udp, DONE, flows.icmp)
        self.packets = base + count

    def _step(self, records: Records, step: Step) -> None:
        """`sweep` on the compiled path: `egress.capture.hot.step` also reads the common frame it stops at (its
        segment, keys and entry), and what `packet` does with them is done here, inline; every other record goes
        to `packet`. Same calls of `_inspect` with the same arguments, in the same order, as `packet` makes."""
        flows = self.flows
        buf, spans, stamps = records.buf, records.spans, records.stamps
        base = self.packets
        count = len(stamps)
        index = 0
        while index < count:
            # a rotation replaces the tables: asked for again each time
            stepped = step(buf, spans, stamps, index, flows.tcp, flows.udp, DONE, flows.icmp)
            if isinstance(stepped, int):
                index = stepped
                if index < count:
                    start = spans[3 * index]
                    frame = buf[start : start + spans[3 * index + 1]]
                    self.packet(stamps[index], spans[3 * index + 2], frame, base + index + 1)
                index += 1
                continue
            index, segment, key, reverse, entry = stepped
            proto, flags = segment[0], segment[6]
            if entry is not DONE or (flags & SYN and proto == TCP and not flags & ACK):
                ts, table = stamps[index], flows.tcp if proto == TCP else flows.udp
                if ts >= flows.rotate_at or len(table) > MAX_TABLE_ENTRIES:
                    self._rotate(ts)
                    table, entry = flows.current[proto], None
                self._inspect(proto, segment, key, reverse, table, entry, ts, base + index + 1, 0)
            index += 1
        self.packets = base + count

    def packet(self, ts: float, linktype: int, frame: bytes, index: int, depth: int = 0) -> None:
        """The slow path: one frame (the ``index``-th of the file; at ``depth``, one carried by a tunnel) decoded,
        its flow found or made, and fed."""
        # `_decode`'s compiled step inline (one Python call fewer for the common frame, on every slow-path packet)
        segment = self.segment(frame) if linktype == LINK_ETHERNET and self.segment is not None else None
        if segment is None:
            segment = self._decode_other(ts, linktype, frame, index, depth)
            if segment is None:
                return
        proto, src, dst, sport, dport, _, flags, _ = segment
        ports = _PORTS.pack(sport, dport)
        key = src + dst + ports
        flows = self.flows
        table = flows.current[proto]
        entry = table.get(key)
        if entry is DONE and not (flags & SYN and proto == TCP and not flags & ACK):
            return
        if ts >= flows.rotate_at or len(table) > MAX_TABLE_ENTRIES:
            self._rotate(ts)
            table, entry = flows.current[proto], None
        self._inspect(proto, segment, key, dst + src + ports[2:] + ports[:2], table, entry, ts, index, depth)

    def _inspect(
        self,
        proto: int,
        segment: tuple[int, bytes, bytes, int, int, bytes, int, int],
        key: bytes,
        reverse: bytes,
        table: dict[bytes, object],
        entry: object,
        ts: float,
        index: int,
        depth: int,
    ) -> None:
        """The rest of `packet` once the table is settled (a split scan's worker settles it its own way,
        `egress.scan_split`): DNS, the flow found or made, and fed."""
        _, src, dst, sport, dport, payload, flags, seq = segment
        if proto == UDP and (sport == _DNS_PORT or dport == _DNS_PORT) and payload:
            self._dns(ts, src, sport, dst, dport, payload)
            return
        flows = self.flows
        if entry is None:
            entry = flows.promote(proto, key, reverse, stamp(index, depth))
            if entry is DONE and not (flags & SYN and proto == TCP and not flags & ACK):
                return  # decided in the previous generation: still decided
        if entry is ENCAP:
            self._inner(encap.unwrap_udp(sport, dport, payload), ts, index, depth)
            return
        if entry is None or entry is DONE:  # unknown, or a SYN reusing a decided flow's ports
            flow = self._new_flow(proto, src, sport, dst, dport, flags, ts, stamp(index, depth))
            entry = table[key] = table[reverse] = flow
        assert isinstance(entry, Flow)
        shaped = entry.feed(proto, src, sport, payload, flags, seq, ts)
        if shaped is not None:
            self._emit(shaped, entry.meta, entry.ts)
        if proto == UDP and not encap.UDP_PORTS.isdisjoint((sport, dport)):
            self._inner(encap.unwrap_udp(sport, dport, payload), ts, index, depth)
        if entry.inspector.done and not entry.watching:
            self._decided(entry, table, key, reverse)

    def _decided(self, flow: Flow, table: dict[bytes, object], key: bytes, reverse: bytes) -> None:
        """A flow's inspection ended: its keys turn `DONE` (`ENCAP` for a tunnel carrying packets), its finding out."""
        found = flow.inspector.finding
        carrier = found is not None and found.category is Category.TUNNEL and found.detector == encap.NAME
        table[key] = table[reverse] = ENCAP if carrier else DONE
        self.stats.unidentified += flow.inspector.unidentified
        for each in flow.inspector.findings:
            self._emit(each, flow.meta, flow.ts)

    def _decode(self, ts: float, linktype: int, frame: bytes, index: int, depth: int) -> Fields | None:
        """The frame's TCP, UDP or ICMP segment; ``None`` for anything else, which is dealt with here (another IP
        protocol by `_ip`, a malformed frame counted). The compiled path reads the common frame (Ethernet, IPv4,
        TCP or UDP, whole) itself (`egress.capture.hot.segment`), and hands every other to `decode`."""
        if linktype == LINK_ETHERNET and self.segment is not None:
            fields = self.segment(frame)
            if fields is not None:
                return fields
        return self._decode_other(ts, linktype, frame, index, depth)

    def _decode_other(self, ts: float, linktype: int, frame: bytes, index: int, depth: int) -> Fields | None:
        """`_decode` of a frame the compiled step did not read (or of any frame on the pure path)."""
        try:
            segment = decode(linktype, frame, ts, self.defrag, any_protocol=True)
        except (Malformed, IndexError):
            if not depth:  # a tunnel's payload that is no packet is the tunnel's business, not a bad frame
                self._skipped(index, linktype, frame)
            return None
        if segment is not None and segment.proto not in _TRANSPORTS:
            self._ip(segment, ts, index, depth)
            return None
        return segment

    def _ip(self, segment: Segment, ts: float, index: int, depth: int) -> None:
        """A packet of another IP protocol: a tunnel finding once per pair of hosts for an encapsulating one
        (`egress.detect.ipproto`), and the packet it carries scanned like any other."""
        proto, src, dst, payload = segment.proto, segment.src, segment.dst, segment.payload
        pair = bytes((proto,)) + min(src, dst) + max(src, dst)
        if pair not in self.ip_pairs:
            if len(self.ip_pairs) >= MAX_IP_PAIRS:
                self.ip_pairs.clear()
            self.ip_pairs.add(pair)
            self._count_pair()
            finding = ipproto.inspect(proto, payload)
            if finding is not None:
                self._emit(finding, FlowMeta(Transport.IP, _address(src), 0, _address(dst), 0), ts)
        self._inner(encap.unwrap_ip(proto, payload), ts, index, depth)

    def _inner(self, inner: encap.Inner | None, ts: float, index: int, depth: int) -> None:
        if inner is not None and depth < MAX_DEPTH:
            self.packet(ts, inner.linktype, inner.frame, index, depth + 1)

    def _count_pair(self) -> None:
        """A new pair of hosts speaking another IP protocol counts as a flow."""
        self.stats.flows += 1

    def _skipped(self, index: int, _linktype: int, _frame: bytes) -> None:
        """The ``index``-th frame (``frame``, of ``linktype``) did not decode: counted, its index kept."""
        stats = self.stats
        stats.skipped += 1
        if len(stats.skipped_at) < 5:
            stats.skipped_at.append(index)

    def _rotate(self, ts: float) -> None:
        self.stats.peak_entries = max(self.stats.peak_entries, self.flows.held())
        self._close(self.flows.rotate(ts))

    def _dns(self, ts: float, src: bytes, sport: int, dst: bytes, dport: int, payload: bytes) -> None:
        """DNS is judged per message across the whole capture (tunnels spread over many flows), not per flow."""
        client = src if dport == _DNS_PORT else dst
        found = self.dns.observe(_address(client), payload, ts)  # decays by capture time, as the resolver by its clock
        if found is not None:
            meta = FlowMeta(Transport.UDP, _address(src), sport, _address(dst), dport)
            if dport != _DNS_PORT:
                meta = FlowMeta(Transport.UDP, meta.dst, dport, meta.src, sport)
            self._emit(found, meta, ts)

    def _new_flow(
        self, proto: int, src: bytes, sport: int, dst: bytes, dport: int, flags: int, ts: float, since: int
    ) -> Flow:
        client, cport, server, sport_ = src, sport, dst, dport
        if proto == TCP:
            syn_ack = flags & SYN and flags & ACK
            if syn_ack or (not flags & SYN and sport < dport):
                # a SYN-ACK comes from the server; mid-connection, the ephemeral (higher) port is the client's
                client, cport, server, sport_ = dst, dport, src, sport
        elif proto == UDP:
            if sport < 1024 <= dport:  # a reply seen before its request
                client, cport, server, sport_ = dst, dport, src, sport
        elif flags == ECHO_REPLY:
            client, server = dst, src
        meta = FlowMeta(_TRANSPORTS[proto], _address(client), cport, _address(server), sport_)
        detectors = self.detectors.for_transport(meta.transport)
        self.stats.flows += 1
        return Flow(meta, client, cport, FlowInspector(meta, detectors), ts, since)

    def finish(self) -> None:
        """The capture ended: every flow still undecided gets its last look."""
        self._close(self.flows.drain())

    def _close(self, flows: Iterable[Flow]) -> None:
        for flow in flows:
            flow.inspector.close()
            for each in flow.inspector.findings:
                self._emit(each, flow.meta, flow.ts)

    def _emit(self, finding: Finding, meta: FlowMeta, ts: float) -> None:
        self.stats.findings += 1
        self.found.append(FlowFinding(self.path, finding, meta, ts))


class Scanner:
    """Scans capture files with one detector set. Not thread-safe; one instance per worker.

    ``hot`` is the hot path's implementation (compiled where built: `egress.capture.hot.implementation`)."""

    def __init__(
        self,
        detectors: DetectorSet,
        idle_seconds: float = IDLE_SECONDS,
        hot: Implementation | None = None,
    ) -> None:
        self.detectors = detectors
        self.idle_seconds = idle_seconds
        self.impl = hot or _implementation()
        if pure_asked() and self.impl.name == "pure":  # EGRESS_SCAN_PURE=1 (a --jobs worker's too): the JSON
            jsonrpc.use_compiled(False)  # reader's pure twins as well (egress.detect.jsonfast)
            binrpc.use_compiled(False)  # and binrpc's searches' (egress.detect.binfast)

    def scan(self, path: str, stats: FileStats, progress: Callable[[int], None] | None = None) -> Iterator[FlowFinding]:
        """Yield the findings of one capture as they are made (after each chunk of packets); fill ``stats``."""
        run = _Pass(path, stats, self)
        found = run.found
        try:
            for records in read_records(path, self.impl):
                _tally_unsupported(records, stats.unsupported)
                if progress is not None:
                    progress(len(records))
                run.sweep(records)
                yield from found
                found.clear()
        except CaptureError as exc:
            stats.error = str(exc)
        finally:
            stats.packets = run.packets
        run.finish()
        yield from found


def _tally_unsupported(records: Records, counts: dict[int, int]) -> None:
    """Count into ``counts`` the packets of ``records`` whose link type egress cannot decode (per link type)."""
    linktypes = records.spans[2::3]
    if set(linktypes) <= SUPPORTED_LINKTYPES:  # one C-level pass: the common chunk is all of one supported type
        return
    for linktype in linktypes:
        if linktype not in SUPPORTED_LINKTYPES:
            counts[linktype] = counts.get(linktype, 0) + 1
