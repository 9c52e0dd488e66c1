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

Counters are cumulative in the kernel and restart when an element expires or the table is replaced (a value
lower than the last one read is a new counter). A packet is counted and logged at the same moment, but its log
reaches the logger later: nflog batches for up to 10 ms, and under a burst the logger's thread may be seconds
behind the socket. So a read's counts are settled only once the logger has judged every log that was on its way
when the read was made: the caller says how far that is (``logged_through``: the logger drained the socket empty
after that moment), and until the log has caught up with a read, nothing counted by it or later is settled (the
read stays the one to settle; later reads only add to what is due after it). A count is added once: by the log
or by the counter, never both, whatever the logger's lag. A key the kernel stopped listing (expired, the table
replaced, or left out of one listing) is settled whole, under the same condition.

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
"""Seconds after its last logged packet that a key the kernel no longer lists is forgotten."""
MAX_LAG = 30.0
"""Seconds a read may wait for the log to catch up with it before it is settled anyway (`DropCounts.reconcile`)."""
MAX_KEYS = 200_000
"""Keys tracked at most (the kernel's two sets hold 65,536 each): beyond that, the stalest are dropped."""


@dataclass(slots=True)
class _Key:
    kernel: int = 0
    """The last value of the kernel's counter."""
    counted: int = 0
    """Packets the kernel counted since this key was first seen (across counter restarts)."""
    previous: int = 0
    """``counted`` as of the read waiting to be settled (`DropCounts.reconcile`)."""
    listed: float = 0.0
    """When a read last listed this key (caller's clock)."""
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
        """When the read waiting to be settled was made (``None``: none yet): its counts are the keys'
        ``previous``."""
        self.forced = 0
        """Reads settled before the log had caught up with them (`MAX_LAG`): their counts may be doubled."""

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
    ) -> list[DecidedFlow]:
        """The kernel's counters as read at ``now`` (the caller's monotonic clock; ``wall``: epoch seconds, the
        decisions' time) → one decision per key with packets that were not logged. ``restate``: the key's template
        as the policy in force now decides it (``None``: not reported, like a refused synthesis).
        ``logged_through``: every packet counted by then has had its log judged (default: the log is always
        caught up). The read waiting to be settled is settled once the log has caught up with it; this read then
        waits in its place. Otherwise it keeps waiting, and this read's counts are only remembered."""
        settle = self._pending is not None and (self._pending <= logged_through or now - self._pending > MAX_LAG)
        if settle and self._pending is not None and self._pending > logged_through:
            self.forced += 1
        out: list[DecidedFlow] = []
        for key, packets in counters.items():
            entry = self._keys.get(key)
            if entry is None:
                if len(self._keys) >= MAX_KEYS:
                    self._evict()
                entry = self._keys[key] = _Key()
            entry.counted += packets - entry.kernel if packets >= entry.kernel else packets
            entry.kernel = packets
            entry.seen = entry.listed = now
            if settle:
                due, entry.previous = entry.previous, entry.counted
                out += self._settle(key, entry, due, synthesize, wall, restate)
        out += self._settle_gone(counters, now, synthesize, wall, restate, logged_through)
        if settle or self._pending is None:
            if not settle:  # the first read: every key's count so far waits for the next
                for key in counters:
                    self._keys[key].previous = self._keys[key].counted
            self._pending = now
        return out

    def _settle_gone(
        self,
        counters: Mapping[CountKey, int],
        now: float,
        synthesize: Callable[[CountKey], DecidedFlow | None],
        wall: float,
        restate: Callable[[CountKey, DecidedFlow], DecidedFlow | None] | None,
        logged_through: float,
    ) -> list[DecidedFlow]:
        """Keys gone from the kernel (expired, the table replaced, or left out of this listing): once the log has
        caught up with the read that last listed one, nothing more will come: it is settled whole."""
        out: list[DecidedFlow] = []
        for key, entry in list(self._keys.items()):
            if key in counters or (entry.listed > logged_through and now - entry.listed <= MAX_LAG):
                continue
            out += self._settle(key, entry, entry.counted, synthesize, wall, restate)
            if now - entry.seen > FORGET_AFTER:
                del self._keys[key]
        return out

    def settle_all(
        self,
        synthesize: Callable[[CountKey], DecidedFlow | None],
        wall: float,
        restate: Callable[[CountKey, DecidedFlow], DecidedFlow | None] | None = None,
    ) -> list[DecidedFlow]:
        """Everything counted by the last read that was neither logged nor reported: the logger is stopping, and
        no later read will settle it."""
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
