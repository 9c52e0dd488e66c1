"""Aggregation of repeated attempts, so that a flood of identical attempts cannot flood Redis. Pure: the caller
passes the time ``now`` (the recorder passes `time.monotonic`: only the windows are measured with it, the records
keep their own times) and an id factory.

Attempts are identical when they share (sandbox, src, dst, dport, transport, host, reason, protocol). The first one
of a key is written at once; the repeats that follow within ``window`` seconds are counted and written as ONE
record (``count``, ``first_ts``, ``last_ts``, a new id) when that window closes. A key that was still repeating
gets a new window; a key quiet for a whole window is forgotten, so its next attempt is written at once again. At
most ``max_keys`` keys are held: a new key beyond that closes the oldest window early.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from egress.decide import Reason
from egress.detect.base import Transport
from egress.record.schema import AttemptRecord, new_id

AggregateKey = tuple[str, str, str, int, Transport, str, Reason, str]


def aggregate_key(record: AttemptRecord) -> AggregateKey:
    """What makes two attempts the same attempt (the source port is not part of it: each retry has a new one)."""
    return (
        record.sandbox,
        record.src,
        record.dst,
        record.dport,
        record.transport,
        record.host,
        record.reason,
        record.protocol,
    )


@dataclass(slots=True)
class _Window:
    opened: float
    """Caller's clock when this window opened."""
    template: AttemptRecord | None = None
    """The first repeat of this window (None: no repeat yet)."""
    count: int = 0
    first_ts: float = 0.0
    last_ts: float = 0.0


class Aggregator:
    """Counts repeats per key; `add` and `flush` return the records ready to be written, oldest first."""

    def __init__(self, window: float, max_keys: int, make_id: Callable[[float], str] = new_id) -> None:
        if window <= 0:
            raise ValueError(f"aggregation window must be positive, got {window}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        self.window = window
        self.max_keys = max_keys
        self._make_id = make_id
        self._windows: OrderedDict[AggregateKey, _Window] = OrderedDict()
        """Ordered by window opening time (``now`` never goes backwards), so closed windows are at the front."""
        self.seen = 0
        """Attempts added, counting those inside aggregated records."""
        self.emitted = 0
        """Records returned."""

    def __len__(self) -> int:
        return len(self._windows)

    def add(self, record: AttemptRecord, now: float) -> list[AttemptRecord]:
        """Take one attempt seen at ``now``; return what is ready to write (this attempt, if it is a first)."""
        self.seen += record.count
        ready = self.flush(now)
        key = aggregate_key(record)
        window = self._windows.get(key)
        if window is None:
            extra: list[AttemptRecord] = []
            while len(self._windows) >= self.max_keys:
                _, oldest = self._windows.popitem(last=False)
                extra.extend(self._close(oldest))
            self._windows[key] = _Window(opened=now)
            extra.append(record)
            self.emitted += len(extra)
            ready.extend(extra)
        elif window.template is None:
            window.template = record
            window.count = record.count
            window.first_ts = record.first_ts
            window.last_ts = record.last_ts
        else:
            window.count += record.count
            window.first_ts = min(window.first_ts, record.first_ts)
            window.last_ts = max(window.last_ts, record.last_ts)
        return ready

    def flush(self, now: float, force: bool = False) -> list[AttemptRecord]:
        """Close the windows that ended by ``now`` (every window with ``force``, e.g. at shutdown)."""
        ready: list[AttemptRecord] = []
        reopen: list[AggregateKey] = []
        while self._windows:
            key, window = next(iter(self._windows.items()))
            if not force and now - window.opened < self.window:
                break
            del self._windows[key]
            closed = self._close(window)
            if closed and not force:
                reopen.append(key)
            ready.extend(closed)
        for key in reopen:
            self._windows[key] = _Window(opened=now)
        self.emitted += len(ready)
        return ready

    def _close(self, window: _Window) -> list[AttemptRecord]:
        if window.template is None:
            return []
        return [
            dataclasses.replace(
                window.template,
                id=self._make_id(window.first_ts),
                ts=window.first_ts,
                count=window.count,
                first_ts=window.first_ts,
                last_ts=window.last_ts,
            )
        ]
