"""The capture scanner's flow table: the flows of one capture, each under both directions' keys, in two generations.

A flow is kept under the raw bytes ``src + dst + sport + dport`` of each direction, one dict per transport, so
that the scanner's fast path finds it from a frame's bytes alone (docs/scanner-hot-path.md). A decided flow's keys
map to `DONE`. The table is kept in two generations by capture time; a flow never seen during a whole generation
is handed back to be closed, so memory follows the flows active lately, not the length of the capture.
"""

from __future__ import annotations

import math
from typing import Final

from egress.capture.packet import FIN, ICMP, RST, SYN, TCP, UDP
from egress.capture.reassembly import TcpStream
from egress.detect.base import Category, Finding, FlowMeta, Transport
from egress.detect.engine import FlowInspector
from egress.detect.sshshape import SshShape

MAX_TABLE_ENTRIES: Final = 1 << 20
"""A generation holding more keys than this is rotated early, whatever the clock says."""
DONE: Final = object()
"""The entry of a decided flow: its packets need nothing more than the lookup that found this."""


class Flow:
    """A flow being inspected: who the client is, the reassembly of both directions for TCP, and for TCP the SSH
    shape watcher the gateway's SSH relay runs too (`egress.detect.sshshape`: port forwarding told from the sizes
    and times of the encrypted traffic), fed the in-order bytes with each segment's capture time."""

    __slots__ = ("client", "closing", "cport", "inspector", "meta", "said", "shape", "since", "streams", "ts")

    def __init__(
        self, meta: FlowMeta, client: bytes, cport: int, inspector: FlowInspector, ts: float, since: int = 0
    ) -> None:
        self.meta = meta
        self.client = client
        self.cport = cport
        self.inspector = inspector
        self.ts = ts
        tcp = meta.transport is Transport.TCP
        self.streams = (TcpStream(), TcpStream()) if tcp else None
        self.shape: SshShape | None = None
        """Made at the flow's first bytes when they can open SSH (either side speaks first: RFC 4253 §4.2)."""
        self.said = not tcp
        """The flow's first bytes were seen (whether to watch it is settled)."""
        self.closing = 0
        self.since = since
        """When the flow entered its table generation (`stamp`): the order in which undecided flows are closed."""

    @property
    def watching(self) -> bool:
        """The SSH shape watcher still has something to tell: the flow is not decided while it does. Once the
        detectors are done it is kept only on SSH (an identification line read), and never after mining."""
        shape = self.shape
        if shape is None or shape.done:
            return False
        if self.inspector.done:
            found = self.inspector.finding
            if not shape.opened or (found is not None and found.category is Category.MINING):
                self.shape = None
                return False
        return True

    def feed(
        self, proto: int, src: bytes, sport: int, payload: bytes, flags: int, seq: int, ts: float
    ) -> Finding | None:
        """One segment of this flow, from either side, captured at ``ts``: TCP reassembled per direction, datagrams
        as they come. The SSH shape watcher's finding, if this segment completed one (the detectors' findings are
        the inspector's)."""
        from_client = src == self.client and sport == self.cport
        inspector = self.inspector
        shaped: Finding | None = None
        if proto == TCP:
            assert self.streams is not None
            stream = self.streams[0] if from_client else self.streams[1]
            if flags & SYN:
                stream.syn(seq)
            if payload:
                data = stream.add(seq, payload)
                if data:
                    inspector.feed_stream(from_client, data)
                    if not self.said:
                        self.said = True
                        opening = data.lstrip(b"\r\n")[:4]
                        self.shape = SshShape() if _SSH.startswith(opening) else None
                    if self.watching:
                        assert self.shape is not None
                        shaped = self.shape.feed(from_client, data, ts)
            if flags & (FIN | RST):
                # a FIN from each side, or one RST, ends the connection
                self.closing += 1 if flags & FIN else 2
                if self.closing >= 2:
                    inspector.close()
                    self.shape = None  # nothing more to watch
        elif proto == UDP:
            inspector.feed_datagram(from_client, payload)
        else:  # ICMP: echo and every other type (covert data in messages that carry none, icmp_tunnel)
            inspector.feed_datagram(from_client, payload, flags)
        return shaped


_SSH: Final = b"SSH-"

Entry = Flow | object
_Generation = dict[int, dict[bytes, Entry]]


def _generation() -> _Generation:
    return {TCP: {}, UDP: {}, ICMP: {}}


def stamp(index: int, depth: int) -> int:
    """The moment a flow enters a table generation: the packet's record index (1-based) and its depth (a packet
    carried by a tunnel is scanned after the one carrying it, and a packet puts at most one flow in the table).
    One scanner and the workers of a split scan (`egress.scan_split`) stamp alike, so both close flows in the
    same order."""
    return index * 8 + depth


def _undecided(generation: _Generation) -> list[Flow]:
    """Each flow of ``generation`` still being inspected, once (both its keys point at it): TCP, UDP, then ICMP,
    each in the order the flows entered the generation (`Flow.since`)."""
    found: list[Flow] = []
    for table in generation.values():
        flows: dict[int, Flow] = {}
        for entry in table.values():
            if isinstance(entry, Flow):
                flows.setdefault(id(entry), entry)
        found.extend(sorted(flows.values(), key=_since))
    return found


def _since(flow: Flow) -> int:
    return flow.since


class FlowTable:
    """The flows of one capture, one dict per transport keyed by the raw bytes src + dst + sport + dport.

    Both directions' keys of a flow are entered; a decided flow's keys map to `DONE`. Two generations by capture
    time, `current` and `previous`: a flow of `previous` seen again moves up to `current`; one never seen again is
    closed when `previous` is dropped at the next rotation.
    """

    __slots__ = ("current", "icmp", "idle_seconds", "previous", "rotate_at", "tcp", "udp")

    def __init__(self, idle_seconds: float) -> None:
        self.idle_seconds = idle_seconds
        self.current = _generation()
        self.previous = _generation()
        self.rotate_at = -math.inf
        """Capture time at which `current` becomes `previous`; the first packet looked up starts the first one."""
        self.tcp = self.current[TCP]
        self.udp = self.current[UDP]
        self.icmp = self.current[ICMP]
        """The current generation's TCP, UDP and ICMP tables, for the fast path."""

    def rotate(self, ts: float) -> list[Flow]:
        """Start a new generation at ``ts``; the undecided flows of the dropped one are returned, to be closed."""
        dropped = self.previous
        self.previous, self.current = self.current, _generation()
        self.tcp, self.udp, self.icmp = self.current[TCP], self.current[UDP], self.current[ICMP]
        self.rotate_at = ts + self.idle_seconds
        return _undecided(dropped)

    def held(self) -> int:
        """Entries in both generations (two per flow)."""
        return sum(map(len, self.current.values())) + sum(map(len, self.previous.values()))

    def promote(self, proto: int, key: bytes, reverse: bytes, since: int) -> Entry | None:
        """The entry of a flow missing from the current generation, moved up from the previous one if it is there
        (a flow entering the generation at ``since``, its `stamp`)."""
        older = self.previous[proto]
        entry = older.pop(key, None)
        if entry is not None:
            table = self.current[proto]
            table[key] = entry
            table[reverse] = older.pop(reverse, entry)
            if isinstance(entry, Flow):
                entry.since = since
        return entry

    def drain(self) -> list[Flow]:
        """Empty both generations; their undecided flows are returned (previous first), to be closed."""
        previous, current = self.drain_generations()
        return previous + current

    def drain_generations(self) -> tuple[list[Flow], list[Flow]]:
        """`drain`, the undecided flows of each generation apart: (previous, current)."""
        flows = _undecided(self.previous), _undecided(self.current)
        self.previous, self.current = _generation(), _generation()
        self.tcp, self.udp, self.icmp = self.current[TCP], self.current[UDP], self.current[ICMP]
        return flows
