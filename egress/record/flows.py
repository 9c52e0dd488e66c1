"""The flow log's record and its aggregation (docs/flow-log.md): ended connections in, bounded aggregates out. Pure.

A `FlowRecord` is one aggregate: every connection of one sandbox to one destination (address, port, transport,
name, rule, decision) that ended within one window of `FlowAggregator.window_s` seconds, counted, with bytes each
way and durations summed. Per sandbox and window at most ``max_destinations`` aggregates are kept; connections
past that are folded into one ``(other)`` aggregate of the window, and counted in ``overflow``, so a busy agent
cannot grow the log (or the recorder's memory) beyond sandboxes x windows x the cap. Readers `merge` the
aggregates that several processes (the proxy workers, the resolver) wrote for the same key and window.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Final

import msgspec

from egress.flowlog import EndedFlow
from egress.record.community_id import community_id

OTHER: Final = "(other)"
"""The host of the aggregate that folds a window's connections past the cap."""
GRACE: Final = 2.0
"""Seconds after a window ends before its aggregates are written (flows that ended in it still arriving)."""
_PROTO: Final = {"tcp": 6, "udp": 17}

Key = tuple[str, str, str, int, str, str, str, str]
"""(sandbox, src, dst, dport, transport, host, rule, decision): what one aggregate is about within its window."""


@dataclass(frozen=True, slots=True)
class FlowRecord:
    """One aggregate of the flow log; its JSON (this field order) is what Redis, the API and ``-o json`` hold."""

    sandbox: str
    gateway: str
    component: str
    """The process that aggregated it (``proxy-0``, ``gateway`` for DNS); ``""`` once merged across several."""
    window_start: float
    window_s: float
    src: str
    dst: str
    dport: int
    transport: str
    host: str
    """SNI, HTTP Host or the DNS question; ``""`` for a connection through a network rule by address;
    `OTHER` for the connections folded past the cap."""
    rule: str
    decision: str
    """``allow``, ``record`` or ``would-block``: the decision the connections went through under."""
    connections: int
    bytes_up: int
    bytes_down: int
    duration_s: float
    duration_max_s: float
    first_ts: float
    last_ts: float
    community_id: str
    """The Community ID of the first connection (a pivot into Zeek or Suricata logs of the same traffic)."""

    @property
    def key(self) -> Key:
        return (self.sandbox, self.src, self.dst, self.dport, self.transport, self.host, self.rule, self.decision)


_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder(FlowRecord)


def encode(record: FlowRecord) -> bytes:
    try:
        return _ENCODER.encode(record)
    except UnicodeEncodeError:  # a name with a lone surrogate (bytes that were not UTF-8): escaped, never a failure
        return json.dumps(to_json(record), separators=(",", ":")).encode()


def decode(raw: str | bytes) -> FlowRecord:
    """One stored aggregate; a malformed one raises ValueError."""
    try:
        return _DECODER.decode(raw)
    except msgspec.DecodeError as error:
        try:  # a lone surrogate escaped by `encode`, which msgspec refuses to decode
            return msgspec.convert(json.loads(raw), FlowRecord)
        except (ValueError, msgspec.ValidationError):
            raise ValueError(f"malformed flow record: {error}") from None


def to_json(record: FlowRecord) -> dict[str, object]:
    return msgspec.to_builtins(record)  # type: ignore[no-any-return]


@dataclass(slots=True)
class _Sum:
    """A window's running sums for one key (mutable: it is added to once per connection)."""

    connections: int = 0
    up: int = 0
    down: int = 0
    duration: float = 0.0
    duration_max: float = 0.0
    first: float = math.inf
    last: float = 0.0
    community_id: str = ""

    def add(self, flow: EndedFlow) -> None:
        duration = max(0.0, flow.ended - flow.started)
        self.connections += 1
        self.up += flow.up
        self.down += flow.down
        self.duration += duration
        self.duration_max = max(self.duration_max, duration)
        if flow.started < self.first:
            self.first = flow.started
            proto = _PROTO.get(flow.transport)
            if proto is not None:
                try:
                    self.community_id = community_id(flow.src, flow.dst, proto, flow.sport, flow.dport)
                except ValueError:  # not an address (a test's made-up peer): no pivot, the aggregate stays
                    self.community_id = ""
        self.last = max(self.last, flow.ended)


@dataclass(slots=True)
class FlowAggregator:
    """Ended flows → aggregates per window; not thread-safe (the recorder's thread owns it)."""

    gateway: str
    component: str
    window_s: float = 60.0
    max_destinations: int = 2000
    overflow: int = 0
    """Connections folded into an `OTHER` aggregate because their window already had ``max_destinations``."""
    _windows: dict[tuple[str, float], dict[Key, _Sum]] = field(default_factory=dict)

    def add(self, flow: EndedFlow) -> None:
        start = math.floor(flow.ended / self.window_s) * self.window_s
        sums = self._windows.setdefault((flow.sandbox, start), {})
        key: Key = (flow.sandbox, flow.src, flow.dst, flow.dport, flow.transport, flow.host, flow.rule, flow.action)
        entry = sums.get(key)
        if entry is None:
            if len(sums) >= self.max_destinations:  # the cap: fold, never grow (the (other) key is the one extra)
                self.overflow += 1
                key = (flow.sandbox, "", "", 0, "", OTHER, "", "")
                entry = sums.get(key)
            if entry is None:
                entry = sums[key] = _Sum()
        entry.add(flow)

    @property
    def held(self) -> int:
        """Aggregates held, not yet taken."""
        return sum(len(sums) for sums in self._windows.values())

    def take(self, now: float, force: bool = False) -> list[FlowRecord]:
        """The aggregates of every window that ended more than `GRACE` seconds before ``now`` (epoch seconds), or
        of every window with ``force``; they are forgotten here (a flow arriving later for such a window starts a
        new aggregate of it, which readers `merge`)."""
        due = [slot for slot in self._windows if force or slot[1] + self.window_s + GRACE <= now]
        records: list[FlowRecord] = []
        for slot in sorted(due, key=lambda s: (s[1], s[0])):
            start = slot[1]
            for key, entry in self._windows.pop(slot).items():
                sandbox, src, dst, dport, transport, host, rule, decision = key
                records.append(
                    FlowRecord(
                        sandbox, self.gateway, self.component, start, self.window_s, src, dst, dport, transport,
                        host, rule, decision, entry.connections, entry.up, entry.down, round(entry.duration, 6),
                        round(entry.duration_max, 6), entry.first, entry.last, entry.community_id,
                    )
                )  # fmt: skip
        return records


def _combine(a: FlowRecord, b: FlowRecord, window_start: float, window_s: float) -> FlowRecord:
    earliest = a if a.first_ts <= b.first_ts else b
    return replace(
        a,
        gateway=a.gateway if a.gateway == b.gateway else "",
        component=a.component if a.component == b.component else "",
        window_start=window_start,
        window_s=window_s,
        connections=a.connections + b.connections,
        bytes_up=a.bytes_up + b.bytes_up,
        bytes_down=a.bytes_down + b.bytes_down,
        duration_s=round(a.duration_s + b.duration_s, 6),
        duration_max_s=max(a.duration_max_s, b.duration_max_s),
        first_ts=earliest.first_ts,
        last_ts=max(a.last_ts, b.last_ts),
        community_id=earliest.community_id,
    )


def merge(records: Iterable[FlowRecord]) -> list[FlowRecord]:
    """One aggregate per key and window (those of several processes, or of a late flow, summed), in the order of
    their windows, then of their keys."""
    merged: dict[tuple[float, Key], FlowRecord] = {}
    for record in records:
        slot = (record.window_start, record.key)
        held = merged.get(slot)
        merged[slot] = record if held is None else _combine(held, record, record.window_start, record.window_s)
    return [merged[slot] for slot in sorted(merged)]


def by_destination(records: Iterable[FlowRecord]) -> list[FlowRecord]:
    """One aggregate per key over every window given (``window_start``: the first window's start, ``window_s``:
    up to the last one's end): what the sandbox reached in the whole span. Most bytes first."""
    spans: dict[Key, FlowRecord] = {}
    for record in records:
        held = spans.get(record.key)
        if held is None:
            spans[record.key] = record
            continue
        start = min(held.window_start, record.window_start)
        end = max(held.window_start + held.window_s, record.window_start + record.window_s)
        spans[record.key] = _combine(held, record, start, end - start)
    return sorted(spans.values(), key=lambda r: (-(r.bytes_up + r.bytes_down), -r.connections, r.key))


@dataclass(frozen=True, slots=True)
class FlowFilter:
    """What a read keeps; None matches everything."""

    host: str | None = None
    """A name: the aggregate's host itself or any name under it."""
    dst: str | None = None
    """The destination address exactly."""
    dport: int | None = None
    decision: str | None = None

    def matches(self, record: FlowRecord) -> bool:
        if self.host is not None:
            name = self.host.lower().rstrip(".")
            if record.host != name and not record.host.endswith("." + name):
                return False
        if self.dst is not None and record.dst != self.dst:
            return False
        if self.dport is not None and record.dport != self.dport:
            return False
        return self.decision is None or record.decision == self.decision


def within(records: Sequence[FlowRecord], since: float | None, until: float | None) -> list[FlowRecord]:
    """The aggregates whose connections ended within [since, until] at least in part (their window overlaps)."""
    return [
        record
        for record in records
        if (since is None or record.last_ts >= since) and (until is None or record.first_ts <= until)
    ]
