"""Addresses the resolver answered → the kernel's per-sandbox allow sets, with a timeout following the TTL.

The resolver must never wait for ``nft``: it hands answers to `AllowSetWriter`, whose thread merges what
arrived in the last moment and applies it as one transaction per set. The sets give per-destination accounting
and carry allowed UDP networks' addresses; the proxy's own check uses the bindings file, so a late set update
never lets anything through or blocks anything.

An address answered again and again (the resolver's cache makes that cheap) is written again only when its
timeout would move by more than `REFRESH` seconds (`Refreshes`): a busy resolver does not run ``nft`` for
elements the kernel already holds long enough.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import queue
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
    asked (pure but for its clock; the writer's thread alone uses it)."""

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
        self.applied = 0
        self.errors = 0
        self._queue: queue.SimpleQueue[tuple[str, list[tuple[str, int]]] | None] = queue.SimpleQueue()
        self._refreshes = Refreshes()
        self._replaced = threading.Event()
        self._thread = threading.Thread(target=self._run, name="allowsets", daemon=True)
        self._thread.start()

    def __call__(self, sandbox: str, answers: list[tuple[str, int]]) -> None:
        """The resolver's ``on_answer``: enqueue and return at once."""
        self._queue.put((sandbox, answers))

    def reload(self, policy: Policy) -> None:
        """The table was replaced with ``policy``'s (its sets start empty): write only sets that it has."""
        self.policy = policy
        self._replaced.set()  # the thread forgets what it wrote before its next write

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        closing = False
        while not closing:
            item = self._queue.get()
            if item is None:
                return
            pending: dict[str, dict[str, int]] = {}
            while True:
                sandbox, answers = item
                if not any(known.name == sandbox for known in self.policy.sandboxes):
                    answers = []  # answered before a reload that removed or renamed the sandbox: no set to fill
                for address, ttl in answers:
                    version = ipaddress.ip_address(address).version
                    name = allow_set(sandbox, version)
                    bounded = min(max(ttl, MIN_TTL), MAX_TTL)
                    elements = pending.setdefault(name, {})
                    elements[address] = max(elements.get(address, 0), bounded)
                try:
                    next_item = self._queue.get(timeout=BATCH_SECONDS)
                except queue.Empty:
                    break
                if next_item is None:
                    closing = True
                    break
                item = next_item
            if self._replaced.is_set():
                self._replaced.clear()
                self._refreshes.forget()
            for set_name, elements in pending.items():
                needed = self._refreshes.needed(set_name, elements)
                try:
                    runner.add_elements(self.table, set_name, needed, netns=self.netns)
                    self._refreshes.written(set_name, needed)
                    self.applied += len(needed)
                except runner.NftError as exc:  # a reload may have replaced the table: next answers refill it
                    self.errors += 1
                    log.warning("allow set %s not updated: %s", set_name, exc)
