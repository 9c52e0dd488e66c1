"""One capture scanned by N processes, split by flow, with the findings and counts of one scanner.

Each worker reads the whole file and inspects the flows it owns (`Owners`: a hash of the flow's two keys; every
DNS message to worker 0, whose tracker is the one scanner's; a UDP tunnel carrier, VXLAN, GENEVE or Teredo, to all
of them, since the packets it carries may be anyone's). Every worker decodes every frame that reaches its slow path,
so the fragments' reassembly and the pairs of hosts of other IP protocols are the same in all; a frame of another
worker's flow marks that flow's keys `DONE` in this worker's table, so the compiled fast path skips its next
packets. Counts and findings of what all workers see are worker 0's.

Generations stay exact: a new one starts at the first record at or after `FlowTable.rotate_at` that reaches the
slow path's table check, and only the owner of that record's flow knows whether it does. So each record at or
after that time is a *candidate*: its owner tells the others (`Link`) whether it starts a generation there, and
the others wait for the word before going on; all rotate at the same record. Candidates run from the first record
past the rotation time to the one that rotates, usually a few records per generation (120 s of capture time).

Findings carry their place in the one scanner's order (the record, the step within it, and for the flows closed
at a rotation or at the end the generation's order, `egress.flowtable.stamp`); `Team.scan` merges by it. A
generation holding more keys than one worker may hold without knowing the others' (`MAX_TABLE_ENTRIES` / N),
where one scanner might rotate early, makes the workers give up: the file is then scanned in one process.
docs/scanner-hot-path.md has the design and its figures.
"""

from __future__ import annotations

import contextlib
import sys
import zlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from egress.capture.hot import Records
from egress.capture.packet import ACK, ICMP, SYN, TCP, UDP
from egress.capture.reader import CaptureError, read_records
from egress.detect import encap
from egress.detect.base import Finding, FlowMeta, Transport
from egress.flowtable import DONE, MAX_TABLE_ENTRIES, Flow
from egress.scanner import (
    _DNS_PORT,
    _PORTS,
    FileStats,
    FlowFinding,
    Scanner,
    _Pass,
    _tally_unsupported,
)

if TYPE_CHECKING:  # multiprocessing is imported only by a scan that starts workers (`egress.scan_jobs.Team`)
    from multiprocessing.connection import Connection

SHARED: Final = -1
"""The owner of a UDP tunnel carrier's flow: every worker inspects it (worker 0 reports it)."""
_END: Final = sys.maxsize
"""Where the flows closed at the end of the capture go in the order of findings: after every record."""
_SILENCE: Final = 600.0
"""Seconds a worker waits for another's word before it gives the file up. Not a timing rule (a worker's word
comes as soon as it reaches the record): only a split that went wrong waits this long (then the file is scanned
in one process)."""
_RANK: Final = {Transport.TCP: 0, Transport.UDP: 1, Transport.ICMP: 2}
"""The order of a flow's transport among the flows closed together (`egress.flowtable._undecided`)."""
_COMMON: Final = b"\x08\x00"

Place = tuple[int, ...]
"""A finding's place in the one scanner's order (`Team.scan` sorts by it)."""


class SplitAbort(Exception):
    """The split cannot give one scanner's findings (or a worker failed): scan the file in one process."""


@dataclass(frozen=True, slots=True)
class Part:
    """One worker's share of a split scan."""

    stats: FileStats
    found: list[tuple[Place, FlowFinding]]
    held: list[int]
    """Flow-table entries of this worker's flows (both generations) at each rotation."""


class Link:
    """A worker's word with the others, one pipe each way per pair, for one file (``job``): whether the record
    at index ``index`` (a candidate, this worker's) started a generation."""

    __slots__ = ("inboxes", "job", "outboxes")

    def __init__(self, inboxes: dict[int, Connection], outboxes: list[Connection]) -> None:
        self.inboxes = inboxes
        self.outboxes = outboxes
        self.job = 0

    def tell(self, index: int, rotated: bool) -> None:
        for out in self.outboxes:
            out.send((self.job, index, rotated))

    def abort(self) -> None:
        """Tell the others this worker gave up the file, so that none waits for it."""
        for out in self.outboxes:
            with contextlib.suppress(OSError):  # a worker gone waits for nobody
                out.send((self.job, -1, False))

    def finished(self) -> None:
        """This worker is through the file: a worker still waiting for its word will not get it."""
        self.tell(_END, False)

    def wait(self, owner: int, index: int) -> bool:
        """Whether the record at ``index`` started a generation, as worker ``owner`` says. Earlier words of a
        worker are those the others did not need (a record it skipped that no other reached the check with)."""
        inbox = self.inboxes[owner]
        while True:
            try:
                if not inbox.poll(_SILENCE):
                    raise SplitAbort(f"no word from worker {owner} in {_SILENCE:.0f} s")
                job, at, rotated = inbox.recv()
            except (EOFError, OSError) as exc:
                raise SplitAbort(f"worker {owner} is gone") from exc
            if job != self.job or 0 <= at < index:
                continue
            if at < 0:
                raise SplitAbort(f"worker {owner} gave up")
            if at != index:
                raise SplitAbort(f"worker {owner} said nothing of record {index}")
            return bool(rotated)


class Owners:
    """Which worker inspects a flow, from its keys alone (both directions give the same)."""

    __slots__ = ("shares",)

    def __init__(self, jobs: int) -> None:
        self.shares = 4 * jobs - 1

    def of(self, proto: int, key: bytes, reverse: bytes, sport: int, dport: int) -> int:
        if proto == UDP:
            if sport == _DNS_PORT or dport == _DNS_PORT:
                return 0  # the DNS tracker's state crosses flows and clients (its bound): one worker holds it
            if sport in encap.UDP_PORTS or dport in encap.UDP_PORTS:
                return SHARED  # what it carries may be any worker's
        if proto == ICMP:  # by its hosts alone, so that `_SplitPass._mine` finds it before any decoding
            half = (len(key) - 4) >> 1
            return self.of_hosts(key[:half], key[half : 2 * half])
        return self._share(key if key < reverse else reverse)

    def of_hosts(self, one: bytes, other: bytes) -> int:
        """The owner of an ICMP flow between these hosts."""
        return self._share(one + other if one < other else other + one)

    def _share(self, name: bytes) -> int:
        # Worker 0 holds the DNS tracker too (about a tenth of a scan's work): it takes 3 of 4N - 1 shares of
        # the other flows, each other worker 4.
        return (zlib.crc32(name) % self.shares + 1) >> 2

    def of_frame(self, frame: bytes) -> int:
        """The owner of a frame the fast path judges on its raw bytes (Ethernet, plain IPv4, TCP or UDP)."""
        return self.of(
            frame[23],
            frame[26:38],
            frame[30:34] + frame[26:30] + frame[36:38] + frame[34:36],
            (frame[34] << 8) | frame[35],
            (frame[36] << 8) | frame[37],
        )


def plain_ipv4(linktype: int, frame: bytes) -> int:
    """The IP protocol of an Ethernet frame of unfragmented IPv4 without options; 0 for any other frame."""
    if linktype != 1 or len(frame) < 34 or frame[12:14] != _COMMON or frame[14] != 0x45 or frame[20] & 0x3F:
        return 0
    return 0 if frame[21] else frame[23]


def raw_shape(linktype: int, frame: bytes) -> bool:
    """The fast path judges this frame on its raw bytes (`egress.capture.hot.sweep`'s test)."""
    return len(frame) >= 54 and plain_ipv4(linktype, frame) in (TCP, UDP)


def _shared(meta: FlowMeta) -> bool:
    """Seen by every worker: another IP protocol's pair of hosts, or a UDP tunnel carrier (not DNS: worker 0's)."""
    if meta.transport is Transport.IP:
        return True
    ports = (meta.sport, meta.dport)
    return meta.transport is Transport.UDP and _DNS_PORT not in ports and not encap.UDP_PORTS.isdisjoint(ports)


def _first_at(stamps: array[float], index: int, moment: float) -> int:
    """The first record from ``index`` captured at or after ``moment`` (the record count if none)."""
    for at in range(index, len(stamps)):
        if stamps[at] >= moment:
            return at
    return len(stamps)


class _SplitPass(_Pass):
    """`egress.scanner._Pass` as worker ``me`` of ``jobs``: the flows it owns, the candidates' word exchanged."""

    __slots__ = ("closing", "emitter", "found_at", "held", "index", "limit", "link", "marks", "me", "owners", "step")

    def __init__(self, path: str, stats: FileStats, scanner: Scanner, me: int, jobs: int, link: Link) -> None:
        super().__init__(path, stats, scanner)
        self.me = me
        self.emitter = me == 0
        self.owners = Owners(jobs)
        self.link = link
        self.limit = MAX_TABLE_ENTRIES // jobs
        self.marks = [{TCP: 0, UDP: 0, ICMP: 0}, {TCP: 0, UDP: 0, ICMP: 0}]
        """Keys of other workers' flows marked `DONE` in the current and the previous generation."""
        self.found_at: list[tuple[Place, FlowFinding]] = []
        self.held: list[int] = []
        self.index = 0
        self.step = 0
        """Calls of `packet` begun and ended within the record: where in it a finding was made."""
        self.closing: Place | None = None

    def sweep(self, records: Records) -> None:
        """`_Pass.sweep` up to the first record at or after the rotation time; from there each record on its own
        (`_candidate`) until one starts a generation."""
        flows = self.flows
        buf, spans, stamps = records.buf, records.spans, records.stamps
        skip = self.impl.sweep
        base = self.packets
        count = len(stamps)
        index = 0
        while index < count:
            end = _first_at(stamps, index, flows.rotate_at)
            if end == index:
                self._candidate(records, index, base)
                index += 1
                continue
            part = stamps if end == count else stamps[:end]  # the fast path stops at the end of its stamps
            # before the rotation time the sweep skips what one scanner's does (scan20: frames without IP, this
            # worker's decided ICMP flows): each such record reaches no table check, so no rotation can move
            at = skip(buf, spans, part, index, flows.tcp, flows.udp, DONE, flows.icmp)
            while at < end:
                start = spans[3 * at]
                frame = buf[start : start + spans[3 * at + 1]]
                linktype = spans[3 * at + 2]
                if linktype != 1 or self._mine(frame):  # inline: this runs for every record not skipped
                    self.index = base + at + 1
                    self.step = 0
                    self.packet(stamps[at], linktype, frame, self.index)
                at = skip(buf, spans, part, at + 1, flows.tcp, flows.udp, DONE, flows.icmp)
            index = end
        self.packets = base + count

    def _mine(self, frame: bytes) -> bool:
        """Whether an Ethernet frame before the rotation time that the fast path did not skip goes to `packet`.
        The common frame of another worker's flow is left to it on its raw bytes (`Owners.of_frame`,
        `Owners.of_hosts`: no decoding, whose only effect here would be to count it malformed, which its owner
        does), and a TCP or UDP one marks that flow's keys `DONE` here; every other frame goes on."""
        if len(frame) < 34 or frame[12:14] != _COMMON or frame[14] != 0x45 or frame[20] & 0x3F or frame[21]:
            return True
        proto = frame[23]
        if proto == ICMP:
            return self.owners.of_hosts(frame[26:30], frame[30:34]) == self.me
        if proto not in (TCP, UDP) or len(frame) < 54:
            return True
        table = self.flows.current[proto]
        key = frame[26:38]
        entry = table.get(key)
        if entry is not None and entry is not DONE:  # a flow being inspected here is this worker's (or shared)
            return True
        owner = self.owners.of_frame(frame)
        if owner == self.me or owner == SHARED:
            return True
        if entry is None:
            size = len(table)
            table[key] = table[frame[30:34] + frame[26:30] + frame[36:38] + frame[34:36]] = DONE
            self.marks[0][proto] += len(table) - size
        return False

    def _record(self, records: Records, at: int, base: int) -> None:
        self.index = base + at + 1
        self.step = 0
        spans = records.spans
        self.packet(records.stamps[at], spans[3 * at + 2], records.frame(at), self.index)

    def _candidate(self, records: Records, at: int, base: int) -> None:
        """A record at or after the rotation time. One the fast path skips as a decided flow of this worker's
        does not reach the check: its owner says so. Every other goes to `packet`, which asks the owner."""
        spans, stamps, flows = records.spans, records.stamps, self.flows
        one_span, one_stamp = spans[3 * at : 3 * at + 3], stamps[at : at + 1]
        alone = self.impl.sweep(records.buf, one_span, one_stamp, 0, flows.tcp, flows.udp, DONE)
        if alone:
            owner = self.owners.of_frame(records.frame(at))
            if owner == self.me:
                self.link.tell(base + at + 1, False)
                return
            if owner == SHARED:
                return
        self._record(records, at, base)

    def packet(self, ts: float, linktype: int, frame: bytes, index: int, depth: int = 0) -> None:
        """`_Pass.packet` for this worker's flows; another worker's flow is marked `DONE` here and left to it."""
        self.step += 1
        segment = self._decode(ts, linktype, frame, index, depth)
        if segment is None:
            return
        proto, src, dst, sport, dport, _, flags, _ = segment
        ports = _PORTS.pack(sport, dport)
        key = src + dst + ports
        reverse = dst + src + ports[2:] + ports[:2]
        flows = self.flows
        table = flows.current[proto]
        entry = table.get(key)
        syn = flags & SYN and proto == TCP and not flags & ACK
        candidate = ts >= flows.rotate_at
        tell = False
        if entry is None or candidate or (entry is DONE and syn):
            owner = self.owners.of(proto, key, reverse, sport, dport)
            if owner not in (self.me, SHARED):
                if candidate and self.link.wait(owner, index):
                    self._rotate(ts)
                    table = flows.current[proto]
                if key not in table:
                    size = len(table)
                    table[key] = table[reverse] = DONE
                    self.marks[0][proto] += len(table) - size
                return
            tell = candidate and owner == self.me
        if entry is DONE and not syn:
            if tell:
                self.link.tell(index, False)
            return
        if candidate:
            if tell:
                self.link.tell(index, True)
            self._rotate(ts)
            table, entry = flows.current[proto], None
        elif len(table) - self.marks[0][proto] > self.limit:
            raise SplitAbort(f"more than {self.limit} flow-table keys in one worker's generation")
        self._inspect(proto, segment, key, reverse, table, entry, ts, index, depth)

    def _inner(self, inner: encap.Inner | None, ts: float, index: int, depth: int) -> None:
        super()._inner(inner, ts, index, depth)
        self.step += 1  # what the carrier's packet finds next comes after what its inner packet found

    def _count_pair(self) -> None:
        if self.emitter:
            self.stats.flows += 1

    def _skipped(self, index: int, linktype: int, frame: bytes) -> None:
        """A frame the fast path judges raw reaches the slow path of its owner as it would one scanner's, and a
        plain ICMP frame its owner's (`_mine`); every other frame reaches every worker's: worker 0 counts it."""
        if plain_ipv4(linktype, frame) == ICMP:
            if self.owners.of_hosts(frame[26:30], frame[30:34]) == self.me:
                super()._skipped(index, linktype, frame)
        elif raw_shape(linktype, frame):
            owner = self.owners.of_frame(frame)
            if owner == self.me or (owner == SHARED and self.emitter):
                super()._skipped(index, linktype, frame)
        elif self.emitter:
            super()._skipped(index, linktype, frame)

    def _new_flow(
        self, proto: int, src: bytes, sport: int, dst: bytes, dport: int, flags: int, ts: float, since: int
    ) -> Flow:
        flow = super()._new_flow(proto, src, sport, dst, dport, flags, ts, since)
        if not self.emitter and _shared(flow.meta):
            self.stats.flows -= 1
        return flow

    def _decided(self, flow: Flow, table: dict[bytes, object], key: bytes, reverse: bytes) -> None:
        unidentified = self.stats.unidentified
        super()._decided(flow, table, key, reverse)
        if not self.emitter and _shared(flow.meta):
            self.stats.unidentified = unidentified

    def _rotate(self, ts: float) -> None:
        flows = self.flows
        marks = sum(self.marks[0].values()) + sum(self.marks[1].values())
        self.held.append(flows.held() - marks)
        self.marks = [{TCP: 0, UDP: 0, ICMP: 0}, self.marks[0]]
        self._close_at(flows.rotate(ts), (self.index, self.step, 0))

    def finish(self) -> None:
        previous, current = self.flows.drain_generations()
        self._close_at(previous, (_END, 0))
        self._close_at(current, (_END, 1))

    def _close_at(self, flows: list[Flow], place: Place) -> None:
        """Close ``flows`` (one generation's undecided flows); their findings go at ``place``, in the order of
        the generation (transport, then `Flow.since`)."""
        for flow in flows:
            flow.inspector.close()
            self.closing = (*place, _RANK[flow.meta.transport], flow.since)
            for each in flow.inspector.findings:
                self._emit(each, flow.meta, flow.ts)
        self.closing = None

    def _emit(self, finding: Finding, meta: FlowMeta, ts: float) -> None:
        if not self.emitter and _shared(meta):
            return
        self.stats.findings += 1
        place = (self.index, self.step, 1) if self.closing is None else self.closing
        self.found_at.append(((*place, len(self.found_at)), FlowFinding(self.path, finding, meta, ts)))


def scan_part(
    scanner: Scanner, path: str, me: int, jobs: int, link: Link, progress: Callable[[int], None] | None = None
) -> Part:
    """Worker ``me``'s share of the scan of ``path`` (`Scanner.scan`'s loop). Raises `SplitAbort`."""
    stats = FileStats(path)
    run = _SplitPass(path, stats, scanner, me, jobs, link)
    try:
        for records in read_records(path, scanner.impl):
            if me == 0:
                _tally_unsupported(records, stats.unsupported)
            if progress is not None:
                progress(len(records))
            run.sweep(records)
    except CaptureError as exc:
        stats.error = str(exc)
    finally:
        stats.packets = run.packets
    run.finish()
    link.finished()
    return Part(stats, run.found_at, run.held)


def merge(path: str, parts: list[Part]) -> tuple[FileStats, list[FlowFinding]]:
    """The workers' shares as one scanner's stats and findings, in its order."""
    first = parts[0].stats
    stats = FileStats(path, packets=first.packets, error=first.error, unsupported=first.unsupported)
    for part in parts:
        each = part.stats
        stats.skipped += each.skipped
        stats.flows += each.flows
        stats.unidentified += each.unidentified
        stats.findings += each.findings
        stats.skipped_at.extend(each.skipped_at)
    stats.skipped_at = sorted(stats.skipped_at)[:5]
    stats.peak_entries = max(map(sum, zip(*(part.held for part in parts), strict=True)), default=0)
    found = sorted((item for part in parts for item in part.found), key=_place)
    return stats, [each for _, each in found]


def _place(item: tuple[Place, FlowFinding]) -> Place:
    return item[0]
