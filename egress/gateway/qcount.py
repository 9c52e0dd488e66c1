"""Counting findings towards a quarantine (pure; the clock is the caller's): which decisions count, the sliding
window of each sandbox's findings, and whether a count trips the sandbox's ``quarantine:`` rule."""

from __future__ import annotations

from collections import deque
from typing import Final

from egress.decide import Enforcement, Reason
from egress.decisions import DecidedFlow
from egress.policy.model import Mode, Quarantine, Sandbox

MAX_HELD: Final = 10_000
"""Findings held per sandbox at most (the largest ``after``): a flood of findings keeps memory bounded."""

_REASONS: Final = {
    Reason.MINING: "mining",
    Reason.TUNNEL: "tunnel",
    Reason.DNS_TUNNEL: "tunnel",
    Reason.CRYPTO_NODE: "crypto-node",
}
"""A decision without a finding still has a category by its reason (a DNS name too long to be a host name)."""


def category_of(flow: DecidedFlow) -> str | None:
    """The finding category a decision counts under, or ``None``: it is no finding, or it was allowed (a detector
    set to ``allow``: the operator said this category is fine for this sandbox)."""
    verdict = flow.verdict
    if verdict.action is Enforcement.ALLOW or not flow.sandbox:
        return None
    if verdict.finding is not None:
        return verdict.finding.category.value
    return _REASONS.get(verdict.reason) if verdict.reason is not None else None


def rule_for(sandbox: Sandbox | None, category: str) -> Quarantine | None:
    """The quarantine rule a finding of ``category`` counts towards in ``sandbox``, if any. A sandbox in report
    mode is never cut off: report mode promises that traffic passes (the findings are recorded as ever)."""
    if sandbox is None or sandbox.quarantine is None or sandbox.mode is Mode.REPORT:
        return None
    return sandbox.quarantine if category in sandbox.quarantine.categories else None


class Window:
    """Each sandbox's findings within its window, by the time they were counted."""

    def __init__(self) -> None:
        self._seen: dict[str, deque[float]] = {}

    def add(self, sandbox: str, now: float, within: float, count: int = 1) -> int:
        """Count ``count`` findings at ``now``; the findings of the last ``within`` seconds."""
        seen = self._seen.setdefault(sandbox, deque(maxlen=MAX_HELD))
        seen.extend([now] * min(count, MAX_HELD))
        return self.count(sandbox, now, within)

    def count(self, sandbox: str, now: float, within: float) -> int:
        seen = self._seen.get(sandbox)
        if seen is None:
            return 0
        while seen and seen[0] <= now - within:
            seen.popleft()
        if not seen:
            del self._seen[sandbox]
            return 0
        return len(seen)

    def clear(self, sandbox: str) -> None:
        """A release starts the count afresh."""
        self._seen.pop(sandbox, None)


def trips(rule: Quarantine, local: int, shared: int | None) -> bool:
    """Whether a sandbox is cut off: the fleet's count (``shared``, from Redis) or, whatever Redis says or when it
    does not answer (``None``), this gateway's own count reaches ``after``: fail closed."""
    return max(local, shared or 0) >= rule.after


def reason(rule: Quarantine, findings: int) -> str:
    kinds = ", ".join(sorted(rule.categories))
    return f"{findings} findings ({kinds}) within {rule.within} s (quarantine after {rule.after})"
