"""Reading the kernel's per-key drop counters a generation at a time: each packet's count read exactly once.

The table counts into one generation of sets while the other waits to be read (`egress.nft.counting`). A read
lists the retired generation, which nothing counts into, then swaps in one transaction: the sets just read are
emptied and counted into from then on, and the ones counted into until then are retired for the next read. Every
count in the kernel is therefore read once, however late: no element has a timeout that could run out first
(the 120 s of old lost a key's count when a read came later than that, as under load 28), and a read lists only the
keys counted since the previous one, not every key of the last two minutes.

`Reading.counted_by` says by when every packet of a reading was counted: the moment of the swap that retired its
sets (the logs of those packets are judged once the drop logger has drained its socket past that moment,
`egress.gateway.dropcount`). A reader that did not make that swap itself (its first read; the table replaced whole
since) does not know it, and says the start of its read, which is later than any count it lists. A reload and the
lockdown keep the counting sets and chains (`egress.nft.runner.replace_table`): the generations and this reader's
swaps go on across them, and nothing counted is lost with the table.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from egress.gateway.dropcount import CountKey
from egress.nft import counting, runner


@dataclass(frozen=True, slots=True)
class Reading:
    """Packets counted per key since the previous reading (each packet in exactly one reading)."""

    counts: dict[CountKey, int] = field(default_factory=dict)
    counted_by: float = float("inf")
    """Every packet in ``counts`` was counted by then (monotonic): the swap that retired the sets read."""


class CountReader:
    """Reads and swaps the gateway table's counting generations (one per call of `read`). Not thread-safe: the
    drop logger's thread owns it."""

    def __init__(self, table: str, netns: str | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.table = table
        self.netns = netns
        self.clock = clock
        self._swapped: tuple[int, float] | None = None
        """The generation this reader last made current, and when (after the commit)."""

    def read(self) -> Reading:
        """What the retired generation counted; then swap (`runner.swap_counts`). Raises `runner.NftError` when the
        table cannot be read or swapped (none, replaced whole during the read): nothing is emptied then, and the
        next read finds the counts still there."""
        started = self.clock()
        current = runner.count_generation(self.table, self.netns)
        if current is None:
            raise runner.NftError(f"table inet {self.table} counts into no generation of counting sets")
        retired = counting.retired(current)
        counted_by = started
        if self._swapped is not None and self._swapped[0] == current:
            counted_by = self._swapped[1]  # retired by our own swap: nothing counted into it since
        counts: dict[CountKey, int] = {}
        for passed, sets in counting.set_names(retired).items():
            for (src, proto, dst), packets in runner.drop_counters(self.table, sets, self.netns).items():
                counts[src, proto, dst, passed] = packets
        if runner.count_generation(self.table, self.netns) != current:  # replaced whole meanwhile (a start): what
            # was listed may be the new table's current generation, still counting; emptied, its next counts are lost
            raise runner.NftError(f"table inet {self.table} replaced while its counters were read")
        runner.swap_counts(self.table, retired, self.netns)
        self._swapped = (retired, self.clock())
        return Reading(counts, counted_by)
