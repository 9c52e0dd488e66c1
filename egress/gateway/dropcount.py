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
reaches the logger a little later (nflog batches for up to 10 ms): so a read settles only what the *previous* read
counted, whose logs have all been judged by now. A count comes one read late, and is never doubled by a log that
was still on its way. A key the kernel stopped listing (expired, or the table replaced) is settled whole.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from egress.decisions import DecidedFlow

CountKey = tuple[str, int, str, bool]
"""(source address, IP protocol number as the kernel counts it, destination address, let through): one counter."""

FORGET_AFTER = 30.0
"""Seconds after its last logged packet that a key the kernel no longer lists is forgotten."""
MAX_KEYS = 200_000
"""Keys tracked at most (the kernel's two sets hold 65,536 each): beyond that, the stalest are dropped."""


@dataclass(slots=True)
class _Key:
    kernel: int = 0
    """The last value of the kernel's counter."""
    counted: int = 0
    """Packets the kernel counted since this key was first seen (across counter restarts)."""
    previous: int = 0
    """``counted`` as of the previous read (every log of those packets has been judged since)."""
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
    ) -> list[DecidedFlow]:
        """The kernel's counters as read at ``now`` (the caller's monotonic clock; ``wall``: epoch seconds, the
        decisions' time) → one decision per key with packets that were not logged. ``restate``: the key's template
        as the policy in force now decides it (``None``: not reported, like a refused synthesis)."""
        out: list[DecidedFlow] = []
        for key, packets in counters.items():
            entry = self._keys.get(key)
            if entry is None:
                if len(self._keys) >= MAX_KEYS:
                    self._evict()
                entry = self._keys[key] = _Key()
            entry.counted += packets - entry.kernel if packets >= entry.kernel else packets
            entry.kernel = packets
            entry.seen = now
            due, entry.previous = entry.previous, entry.counted
            out += self._settle(key, entry, due, synthesize, wall, restate)
        for key, entry in list(self._keys.items()):
            if key in counters:
                continue
            # Gone from the kernel (expired, or the table replaced): nothing more will come, settle it whole.
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
