"""The garbage collector around building a policy: no collection while a policy's objects are made, and those
objects kept out of every collection after (a gateway process's policy is built rarely and lives long).

A policy of 100,000 hosts is about half a million objects the collector tracks (rules, their index entries). A
full collection walks every tracked object of the process holding the interpreter lock, ~60 ms on a quiet core
for that policy alone, and building it triggered several: the supervisor's resolver (in the same interpreter)
answered nothing meanwhile (issue 12: no DNS answer delayed by more than 50 ms during an apply). So
`building()` keeps the collector off while a policy is unpickled and indexed, and on the way out freezes what
exists (`gc.freeze`: the permanent generation, never walked again) before the collector runs again: later
collections walk only what was made since, in steady state as during the next apply.

Frozen objects are still freed by reference counting when the next policy replaces them (rules, indexes and
policies hold no reference cycles). What the freeze costs: any cyclic garbage that exists at that moment is
never collected; `building()` only runs for a reload (rare, seconds) and young cyclic garbage is small.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class _Sections:
    """The `building()` sections under way in this process (several threads may build at once)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.was_enabled = False
        """Whether the collector was on when the first section began (tests may run with it off)."""


_sections = _Sections()


@contextmanager
def building() -> Iterator[None]:
    """The collector off for the section (and every section that overlaps it); when the last one ends, what the
    process holds is frozen and the collector is on again (if it was before)."""
    sections = _sections
    with sections.lock:
        if sections.depth == 0:
            sections.was_enabled = gc.isenabled()
            gc.disable()
        sections.depth += 1
    try:
        yield
    finally:
        with sections.lock:
            sections.depth -= 1
            if sections.depth == 0:
                gc.freeze()  # O(1): the generations' lists are moved, not walked
                if sections.was_enabled:
                    gc.enable()


def settle() -> None:
    """Collect once, then freeze what the process holds: for what a process loads at start (modules, name lists,
    its policy), which lives as long as it does; a full collection then walks only what came since (the
    supervisor's: ~50 ms of CPU before, ~1 ms after; docs/dns-performance.md)."""
    gc.collect()
    gc.freeze()
