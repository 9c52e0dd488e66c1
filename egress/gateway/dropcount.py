"""What the rate-limited drop log left out: the kernel's per-key drop counters against the packets logged (pure).

nftables logs a sandbox's dropped packets at most ``key_log_rate`` a second per (source, IP protocol,
destination) (`egress.nft.render`), so a flood is mostly not logged; but it counts every one of them first, per
key, in the sets named by `egress.nft.names.count_set` (dropped and, for report mode, let through, apart). A key
here is that triple and whether the kernel let the packets through (`CountKey`). `DropCounts` keeps, per key, what
the kernel counted and what the drop logger judged from the log, and `reconcile` turns the difference (what the
log's limits suppressed) into decisions carrying a ``count``: the verdict of the last logged packet of that key
(its detector finding, destination port, reason), or, when none of the key's packets was logged at all, the
decision ``synthesize`` makes from the key alone; ``restate`` brings either up to the policy in force (a reload
may have renamed the sandbox since). The recorder's aggregation then folds them into the key's one record: a flood
is one record with the right count, not thousands, and not zero.

The kernel's counters come in readings (`egress.gateway.dropread`): each packet is in exactly one reading, which
says by when its packets were counted (``counted_by``). A packet is counted and logged at the same moment, but its
log reaches the logger later: nflog batches for up to 10 ms, and under a burst the logger's thread may be seconds
behind the socket. So a reading's counts are settled only once the logger has judged every log that was on its way
by ``counted_by``: the caller says how far that is (``logged_through``: the logger drained the socket empty after
that moment), and until the log has caught up with a reading, nothing in it or in later ones is settled (the
reading stays the one to settle; later ones only add to what is due after it). A count is added once: by the log
or by the counter, never both, whatever the logger's lag, and whatever the reader's: a reading's counts stay in the
kernel until they are read.

Approximate, by design: when the log has not caught up for `MAX_LAG` seconds (the logger is flooded without
pause), the oldest read is settled anyway, so counts are never held back for ever; a log still queued for one of
its packets is then counted a second time.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from egress.decisions import DecidedFlow

CountKey = tuple[str, int, str, bool]
"""(source address, IP protocol number as the kernel counts it, destination address, let through): one counter."""

FORGET_AFTER = 30.0
"""Seconds after its last packet (logged or read) that a key with nothing due is forgotten."""
MAX_LAG = 30.0
"""Seconds a read may wait for the log to catch up with it before it is settled anyway (`DropCounts.reconcile`)."""
MAX_KEYS = 200_000
"""Keys tracked at most (a generation of the kernel's sets holds 65,536 a family): beyond that, the stalest are
dropped."""


@dataclass(slots=True)
class _Key:
    counted: int = 0
    """Packets the kernel counted since this key was first seen (the sum of its readings)."""
    previous: int = 0
    """``counted`` as of the reading waiting to be settled (`DropCounts.reconcile`)."""
    judged: int = 0
    """Packets of this key the drop logger judged from the log."""
    added: int = 0
    """Packets added by `DropCounts.reconcile` (counted, never logged)."""
    last: DecidedFlow | None = None
    """The decision on the last logged packet."""
    seen: float = 0.0


class DropCounts:
    """Per-key bookkeeping between the log and the kernel's counters. Not thread-safe: the drop logger's thread
    owns it."""

    def __init__(self) -> None:
        self._keys: dict[CountKey, _Key] = {}
        self.added = 0
        """Packets counted by the kernel and reported without having been logged (for metrics and tests)."""
        self._pending: float | None = None
        """By when the packets of the reading waiting to be settled were counted (``None``: none waits): its counts
        are the keys' ``previous``."""
        self.forced = 0
        """Readings settled before the log had caught up with them (`MAX_LAG`): their counts may be doubled."""
        self._read_through = -math.inf
        """Every packet counted by then is in a reading received (the latest ``counted_by``)."""

    def __len__(self) -> int:
        return len(self._keys)

    def judged(self, key: CountKey, decision: DecidedFlow, now: float) -> None:
        """The drop logger judged one logged packet of ``key``."""
        entry = self._keys.get(key)
        if entry is None:
            if len(self._keys) >= MAX_KEYS:
                self._evict()
            entry = self._keys[key] = _Key()
        entry.judged += 1
        entry.last = decision
        entry.seen = now

    def reconcile(
        self,
        counters: Mapping[CountKey, int],
        now: float,
        synthesize: Callable[[CountKey], DecidedFlow | None],
        wall: float,
        restate: Callable[[CountKey, DecidedFlow], DecidedFlow | None] | None = None,
        logged_through: float = math.inf,
        counted_by: float | None = None,
    ) -> list[DecidedFlow]:
        """One reading of the kernel's counters (packets counted per key since the previous reading, all of them by
        ``counted_by``, default ``now``), made at ``now`` (the caller's monotonic clock; ``wall``: epoch seconds, the
        decisions' time) → one decision per key with packets that were not logged. ``restate``: the key's template
        as the policy in force now decides it (``None``: not reported, like a refused synthesis).
        ``logged_through``: every packet counted by then has had its log judged (default: the log is always
        caught up). The reading waiting to be settled is settled once the log has caught up with it; this one then
        waits in its place, and is settled at once if the log has caught up with it too. Otherwise it keeps
        waiting, and this reading's counts are only remembered."""
        by = now if counted_by is None else min(counted_by, now)
        out: list[DecidedFlow] = []
        if self._pending is not None and (self._pending <= logged_through or now - self._pending > MAX_LAG):
            if self._pending > logged_through:
                self.forced += 1
            out += self._settle_pending(synthesize, wall, restate)
        for key, packets in counters.items():
            entry = self._keys.get(key)
            if entry is None:
                if len(self._keys) >= MAX_KEYS:
                    self._evict()
                entry = self._keys[key] = _Key()
            entry.counted += packets
            entry.seen = max(entry.seen, now)
        self._read_through = max(self._read_through, by)
        if self._pending is None:
            for entry in self._keys.values():
                entry.previous = entry.counted
            self._pending = by
            if by <= logged_through:
                out += self._settle_pending(synthesize, wall, restate)
        self._forget(now)
        return out

    def _settle_pending(
        self,
        synthesize: Callable[[CountKey], DecidedFlow | None],
        wall: float,
        restate: Callable[[CountKey, DecidedFlow], DecidedFlow | None] | None,
    ) -> list[DecidedFlow]:
        """Settle every key up to the reading waiting (its ``previous``)."""
        out: list[DecidedFlow] = []
        for key, entry in self._keys.items():
            out += self._settle(key, entry, entry.previous, synthesize, wall, restate)
        self._pending = None
        return out

    def _forget(self, now: float) -> None:
        """Keys with nothing due and nothing more to come: their last logged packet was counted before the readings
        read so far (so its count was read: forgetting the key earlier would count that packet again, as a new
        key's), and `FORGET_AFTER` passed since."""
        for key, entry in list(self._keys.items()):
            if (
                entry.seen < self._read_through
                and now - entry.seen > FORGET_AFTER
                and entry.counted - entry.judged - entry.added <= 0
            ):
                del self._keys[key]

    def settle_all(
        self,
        synthesize: Callable[[CountKey], DecidedFlow | None],
        wall: float,
        restate: Callable[[CountKey, DecidedFlow], DecidedFlow | None] | None = None,
    ) -> list[DecidedFlow]:
        """Everything read so far that was neither logged nor reported: the logger is stopping, and no later read
        will settle it."""
        out: list[DecidedFlow] = []
        for key, entry in self._keys.items():
            out += self._settle(key, entry, entry.counted, synthesize, wall, restate)
        return out

    def _settle(
        self,
        key: CountKey,
        entry: _Key,
        due: int,
        synthesize: Callable[[CountKey], DecidedFlow | None],
        wall: float,
        restate: Callable[[CountKey, DecidedFlow], DecidedFlow | None] | None,
    ) -> list[DecidedFlow]:
        """The decision for the packets among the first ``due`` counted that were neither logged nor added."""
        missing = due - entry.judged - entry.added
        if missing <= 0:
            return []
        template = entry.last if entry.last is not None else synthesize(key)
        if template is not None and restate is not None:
            template = restate(key, template)
        if template is None:
            return []
        entry.added += missing
        self.added += missing
        if entry.last is None:
            entry.last = template
        return [_unlogged(template, missing, wall)]

    def _evict(self) -> None:
        stalest = sorted(self._keys, key=lambda k: self._keys[k].seen)[: max(1, MAX_KEYS // 10)]
        for key in stalest:
            del self._keys[key]


def _unlogged(template: DecidedFlow, count: int, wall: float) -> DecidedFlow:
    verdict = template.verdict
    note = f"{count} more not logged (log rate limit), counted by nftables; last logged: {verdict.evidence}"
    return dataclasses.replace(
        template, ts=wall, sport=0, count=count, verdict=dataclasses.replace(verdict, evidence=note[:160])
    )
