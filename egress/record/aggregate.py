"""Aggregation of repeated attempts into one record per attempt and its count updates, and the fold that turns
them back into one record. Pure: the caller passes the time ``now`` (the recorder passes `time.monotonic`: only
the windows are measured with it, the records keep their own times) and an id factory.

Attempts are identical when they share (sandbox, src, dst, dport, transport, host, reason, protocol). The first
one of a key is returned at once: it is the attempt's record. Repeats within ``window`` seconds of it are counted,
and at least every ``update_interval`` seconds the counts gathered since the last update are returned as a
**count update**: a record of its own (a new id, so that it is delivered exactly once like any record) with
``update_of`` = the attempt record's id, ``ts`` = that record's ``ts``, and ``count``, ``first_ts``, ``last_ts``
of the repeats it adds. A reader folds the updates into their record (`fold`). So what a process holds in memory
and loses if it is killed is at most one update interval's counts, never an attempt.

A key still repeating after its window gets a new record (a flood costs one record per window per key, plus an
update per interval); a key quiet for a whole window is forgotten. At most ``max_keys`` keys are held: a new key
beyond that forgets the oldest, returning its pending update.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Iterable
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
class _Open:
    """A key's current record and the repeats counted since its last update."""

    record: AttemptRecord
    opened: float
    """Caller's clock when the record was returned."""
    count: int = 0
    first_ts: float = 0.0
    last_ts: float = 0.0


class Aggregator:
    """Counts repeats per key; `add` and `flush` return the records and updates ready to be written."""

    def __init__(
        self,
        window: float,
        max_keys: int,
        make_id: Callable[[float], str] = new_id,
        update_interval: float = 1.0,
    ) -> None:
        if window <= 0:
            raise ValueError(f"aggregation window must be positive, got {window}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        if update_interval <= 0:
            raise ValueError(f"update interval must be positive, got {update_interval}")
        self.window = window
        self.max_keys = max_keys
        self.update_interval = update_interval
        self._make_id = make_id
        self._open: OrderedDict[AggregateKey, _Open] = OrderedDict()
        """Ordered by opening time (``now`` never goes backwards), so expired keys are at the front."""
        self._dirty: dict[AggregateKey, None] = {}
        """Keys with repeats not yet returned as an update (insertion-ordered)."""
        self._update_at: float | None = None
        """When the pending counts are next returned (None: nothing pending)."""
        self._named: dict[str, None] = {}
        """Ids of the named records written lately (insertion-ordered, at most 4 ``max_keys``: longer than their
        keys are held): a late repeat of one becomes a count update of it, never a second record with its id."""
        self.seen = 0
        """Attempts added, counting those inside aggregated input."""
        self.emitted = 0
        """Records and updates returned."""

    def __len__(self) -> int:
        return len(self._open)

    @property
    def pending(self) -> int:
        """Repeats counted but not yet returned: what a kill would lose."""
        return sum(self._open[key].count for key in self._dirty)

    def add(self, record: AttemptRecord, now: float, *, named: bool = False) -> list[AttemptRecord]:
        """Take one attempt seen at ``now``; return what is ready to write (this attempt, if it is a first).

        ``named``: the record's id was named when the attempt was decided (`egress.record.naming`), the same for
        every repeat that belongs to one record: the id, not the window, says whether it is a repeat. A repeat
        whose record was written and then forgotten (its window ended, or ``max_keys``) is still counted into it,
        as a count update."""
        self.seen += record.count
        ready = self.flush(now)
        key = aggregate_key(record)
        state = self._open.get(key)
        if named:
            repeat = state is not None and state.record.id == record.id
            if not repeat and record.id in self._named:
                ready.extend(self._forget(key) if state is not None else [])
                state = self._open[key] = _Open(record, opened=now)
                repeat = True
        else:
            repeat = state is not None and now - state.opened < self.window
        if state is not None and repeat:
            if state.count == 0:
                state.first_ts, state.last_ts = record.first_ts, record.last_ts
                self._dirty[key] = None
                if self._update_at is None:
                    self._update_at = now + self.update_interval
            state.count += record.count
            state.first_ts = min(state.first_ts, record.first_ts)
            state.last_ts = max(state.last_ts, record.last_ts)
            return ready
        if state is not None:
            ready.extend(self._forget(key))
        while len(self._open) >= self.max_keys:
            ready.extend(self._forget(next(iter(self._open))))
        self._open[key] = _Open(record, opened=now)
        if named:
            self._named[record.id] = None
            while len(self._named) > 4 * self.max_keys:
                del self._named[next(iter(self._named))]
        ready.append(record)
        self.emitted += 1
        return ready

    def flush(self, now: float, force: bool = False) -> list[AttemptRecord]:
        """The updates due by ``now`` and those of keys whose window ended; with ``force`` (a flush, a shutdown)
        every pending update. Keys stay: a repeat after a flush is still an update of its record."""
        ready: list[AttemptRecord] = []
        while self._open:
            key, state = next(iter(self._open.items()))
            if now - state.opened < self.window:
                break
            ready.extend(self._forget(key))
        if self._dirty and (force or (self._update_at is not None and now >= self._update_at)):
            for key in list(self._dirty):
                ready.extend(self._update(key))
        if not self._dirty:
            self._update_at = None
        return ready

    def _forget(self, key: AggregateKey) -> list[AttemptRecord]:
        update = self._update(key)
        del self._open[key]
        return update

    def _update(self, key: AggregateKey) -> list[AttemptRecord]:
        state = self._open[key]
        if state.count == 0:
            return []
        self._dirty.pop(key, None)
        base = state.record
        update = dataclasses.replace(
            base,
            id=self._make_id(base.ts),
            count=state.count,
            first_ts=state.first_ts,
            last_ts=state.last_ts,
            update_of=base.id,
        )
        state.count = 0
        self.emitted += 1
        return [update]


def fold(records: Iterable[AttemptRecord], *, stand_in: bool = True) -> list[AttemptRecord]:
    """The records with their count updates added in (``count`` summed, ``first_ts`` and ``last_ts`` widened), in
    the order of the records. An update whose record is not among them stands for it (its id, no ``update_of``:
    the record was trimmed by the retention), so each attempt comes out once; without ``stand_in`` (a live
    follow, whose record came earlier) it is kept as the update it is."""
    out: dict[str, AttemptRecord] = {}
    updates: list[AttemptRecord] = []
    for record in records:
        if record.update_of:
            updates.append(record)
        else:
            out[record.id] = record
    if not updates:
        return list(out.values())
    for update in updates:
        into = out.get(update.update_of)
        if into is None:
            out[update.update_of] = dataclasses.replace(update, id=update.update_of, update_of="")
            if not stand_in:
                out[update.update_of] = update
            continue
        out[update.update_of] = dataclasses.replace(
            into,
            count=into.count + update.count,
            first_ts=min(into.first_ts, update.first_ts),
            last_ts=max(into.last_ts, update.last_ts),
        )
    return list(out.values())
