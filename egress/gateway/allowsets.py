"""Addresses the resolver answered → the kernel's per-sandbox allow sets, with a timeout following the TTL.

The resolver must never wait for ``nft``: it hands answers to `AllowSetWriter`, whose thread merges what
arrived in the last moment and applies it as one transaction per set. The sets give per-destination accounting
and carry allowed UDP networks' addresses; the proxy's own check uses the bindings file, so a late set update
never lets anything through or blocks anything.

An address answered again and again (the resolver's cache makes that cheap) is queued again only when its
timeout would move by more than `REFRESH` seconds (`Refreshes`, checked in the caller's thread): a busy resolver
neither wakes the thread nor runs ``nft`` for elements the kernel already holds long enough.
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable

from egress.dnsserver.bindings import MAX_TTL, MIN_TTL
from egress.nft import runner
from egress.nft.render import allow_set
from egress.policy.model import Policy

log = logging.getLogger("egress.allowsets")

BATCH_SECONDS = 0.05
REFRESH = 2.0
"""Seconds an element's deadline must move forward before it is written again."""
REMEMBERED_MAX = 100_000


class Refreshes:
    """Which set elements need writing: those the kernel does not hold until ``REFRESH`` seconds short of what is
    asked (pure but for its clock; the caller's thread alone uses it)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._deadlines: dict[tuple[str, str], float] = {}

    def needed(self, set_name: str, elements: dict[str, int]) -> list[tuple[str, int]]:
        now = self.clock()
        return [
            (address, timeout)
            for address, timeout in sorted(elements.items())
            if self._deadlines.get((set_name, address), -math.inf) < now + timeout - REFRESH
        ]

    def written(self, set_name: str, elements: list[tuple[str, int]]) -> None:
        now = self.clock()
        for address, timeout in elements:
            self._deadlines[(set_name, address)] = now + timeout
        if len(self._deadlines) > REMEMBERED_MAX:  # forget what has expired; at worst an element is written again
            self._deadlines = {key: deadline for key, deadline in self._deadlines.items() if deadline > now}

    def forget(self) -> None:
        """The sets were replaced (a reload): nothing is held any more."""
        self._deadlines.clear()


class AllowSetWriter:
    def __init__(self, table: str, policy: Policy, netns: str | None = None) -> None:
        self.table = table
        self.netns = netns
        self.policy = policy
        """Whose sets exist in the table: answers for a sandbox the policy no longer has are dropped."""
        self._sandboxes = frozenset(sandbox.name for sandbox in policy.sandboxes)
        self.applied = 0
        self.errors = 0
        self._refreshes = Refreshes()
        """What the kernel holds (or will once the queued batch is written); the caller's thread alone uses it."""
        self._forget = False
        """Set by the writer's thread when a write failed: the caller's thread forgets what it counted as held."""
        self._pending: collections.deque[tuple[str, str, int]] = collections.deque()
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="allowsets", daemon=True)
        self._thread.start()

    def __call__(self, sandbox: str, answers: list[tuple[str, int]]) -> None:
        """The resolver's ``on_answer``: queue what the kernel does not already hold long enough and return at once.
        The thread is woken once a batch, not once an answer: a wake-up per query handed the interpreter to the
        thread each time and left the resolver waiting to get it back."""
        if self._forget:
            self._forget = False
            self._refreshes.forget()
        if sandbox not in self._sandboxes:
            return  # answered before a reload that removed or renamed the sandbox: no set to fill
        for address, ttl in answers:
            name = allow_set(sandbox, 6 if ":" in address else 4)
            bounded = min(max(ttl, MIN_TTL), MAX_TTL)
            if self._refreshes.needed(name, {address: bounded}):
                self._refreshes.written(name, [(address, bounded)])
                self._pending.append((name, address, bounded))
        if self._pending and not self._wake.is_set():
            self._wake.set()

    def reload(self, policy: Policy) -> None:
        """The table was replaced with ``policy``'s (its sets start empty): write only sets that it has."""
        self.policy = policy
        self._sandboxes = frozenset(sandbox.name for sandbox in policy.sandboxes)
        self._refreshes.forget()

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if not self._closing:
                time.sleep(BATCH_SECONDS)  # let a batch gather: one nft run for everything answered meanwhile
            self._wake.clear()
            batch: dict[str, dict[str, int]] = {}
            while self._pending:
                name, address, timeout = self._pending.popleft()
                elements = batch.setdefault(name, {})
                elements[address] = max(elements.get(address, 0), timeout)
            for set_name, elements in batch.items():
                try:
                    runner.add_elements(self.table, set_name, sorted(elements.items()), netns=self.netns)
                    self.applied += len(elements)
                except runner.NftError as exc:  # a reload may have replaced the table: next answers refill it
                    self.errors += 1
                    self._forget = True
                    log.warning("allow set %s not updated: %s", set_name, exc)
            if self._closing and not self._pending:
                return
