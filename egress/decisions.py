"""An attempt: one decided connection, query or dropped packet, with where it came from and the verdict.

The gateway's components (resolver, proxy workers, drop logger) describe what they decided as `DecidedFlow`s and
hand them to a `Reporter`; the reporter turns blocks and would-blocks into records. Pure data.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Protocol

from egress.decide import Verdict


@dataclass(frozen=True, slots=True)
class DecidedFlow:
    ts: float
    sandbox: str
    """The sandbox's name, or ``""`` for a source outside every sandbox."""
    src: str
    sport: int
    dst: str
    dport: int
    transport: str
    """``tcp``, ``udp`` or ``icmp``."""
    host: str
    """The name asked for (DNS question, TLS SNI, HTTP Host), or ``""``."""
    verdict: Verdict


class Reporter(Protocol):
    def report(self, attempt: DecidedFlow) -> None:
        """A decision worth recording (block, would-block, record)."""

    def allowed(self, component: str) -> None:
        """A decision that let traffic through (counted for metrics, not recorded)."""


class ListReporter:
    """Keeps attempts in memory (tests, and the demo's own table)."""

    def __init__(self) -> None:
        self.attempts: list[DecidedFlow] = []

    def report(self, attempt: DecidedFlow) -> None:
        self.attempts.append(attempt)

    def allowed(self, component: str) -> None:
        pass


class LogReporter:
    """Writes each attempt as one canonical JSON line to a logger (every decision leaves an audit line)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("egress.decision")

    def report(self, attempt: DecidedFlow) -> None:
        self.log.warning("decision %s", json.dumps(canonical(attempt), separators=(",", ":")))

    def allowed(self, component: str) -> None:
        pass


class FanoutReporter:
    """Hands each attempt to several reporters (the log line and the record store)."""

    def __init__(self, *reporters: Reporter) -> None:
        self.reporters = reporters

    def report(self, attempt: DecidedFlow) -> None:
        for reporter in self.reporters:
            reporter.report(attempt)

    def allowed(self, component: str) -> None:
        for reporter in self.reporters:
            reporter.allowed(component)


def canonical(attempt: DecidedFlow) -> dict[str, object]:
    verdict = attempt.verdict
    return {
        "ts": round(attempt.ts, 6),
        "sandbox": attempt.sandbox,
        "src": attempt.src,
        "sport": attempt.sport,
        "dst": attempt.dst,
        "dport": attempt.dport,
        "transport": attempt.transport,
        "host": attempt.host,
        "action": verdict.action.value,
        "reason": verdict.reason.value if verdict.reason is not None else None,
        "rule": verdict.rule,
        "evidence": verdict.evidence,
    }
