"""Addresses the resolver answered → the kernel's per-sandbox allow sets, with a timeout following the TTL.

The resolver must never wait for ``nft``: it hands answers to `AllowSetWriter`, whose thread merges what
arrived in the last moment and applies it as one transaction per set. The sets give per-destination accounting
and carry allowed UDP networks' addresses; the proxy's own check uses the bindings file, so a late set update
never lets anything through or blocks anything.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import threading

from egress.dnsserver.bindings import MAX_TTL, MIN_TTL
from egress.nft import runner
from egress.nft.render import allow_set
from egress.policy.model import Policy

log = logging.getLogger("egress.allowsets")

BATCH_SECONDS = 0.05


class AllowSetWriter:
    def __init__(self, table: str, policy: Policy, netns: str | None = None) -> None:
        self.table = table
        self.netns = netns
        self.policy = policy
        """Whose sets exist in the table: answers for a sandbox the policy no longer has are dropped."""
        self.applied = 0
        self.errors = 0
        self._queue: queue.SimpleQueue[tuple[str, list[tuple[str, int]]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="allowsets", daemon=True)
        self._thread.start()

    def __call__(self, sandbox: str, answers: list[tuple[str, int]]) -> None:
        """The resolver's ``on_answer``: enqueue and return at once."""
        self._queue.put((sandbox, answers))

    def reload(self, policy: Policy) -> None:
        """The table was replaced with ``policy``'s (its sets start empty): write only sets that it has."""
        self.policy = policy

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
            for set_name, elements in pending.items():
                try:
                    runner.add_elements(self.table, set_name, sorted(elements.items()), netns=self.netns)
                    self.applied += len(elements)
                except runner.NftError as exc:  # a reload may have replaced the table: next answers refill it
                    self.errors += 1
                    log.warning("allow set %s not updated: %s", set_name, exc)
