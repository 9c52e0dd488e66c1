"""A decided flow: one decided connection, request, query or dropped packet, with where it came from and the verdict.

The gateway's components (resolver, proxy workers, drop logger) describe every decision they make, allowed or
not, as a `DecidedFlow` and hand it to a `Reporter`. `LogReporter` writes each as one canonical line (the audit
trail the README promises: one ``decision {...}`` line per decision); the recorder counts each and turns blocks,
would-blocks and records into records. Pure data and a logger; nothing here decides.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Protocol

import msgspec

from egress.decide import Enforcement, Verdict
from egress.logbuffer import handler_for


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
    """``tcp``, ``udp``, ``icmp`` or ``ip`` (another IP protocol, named by ``protocol``)."""
    host: str
    """The name asked for (DNS question, TLS SNI, HTTP Host), or ``""``."""
    verdict: Verdict
    protocol: str = ""
    """What the packet was when no detector said (``gre``, ``sctp``, ``ip-253``); ``""``: the transport."""
    count: int = 1
    """How many identical packets this decision stands for (the drop logger's count of packets the kernel
    dropped without logging them, its log being rate-limited)."""
    decide_s: float | None = None
    """Seconds the decision took where it is measured (the proxy's gate on a connection's first bytes: detectors
    and policy), for the gateway's latency histogram (`egress.gateway.metrics`); not part of the record."""
    record_id: str = ""
    """The id of the record this decision is part of, when it was named at decision time (`egress.record.naming`:
    a deny reason shows it); ``""``: the recorder gives the record a new id."""


class Reporter(Protocol):
    def report(self, attempt: DecidedFlow) -> None:
        """One decision, whatever its action: allowed ones are logged and counted, the others also recorded."""


_JSON = msgspec.json.Encoder()


class LogReporter:
    """Writes each decision as one canonical JSON line: allowed ones at INFO, the others (block, would-block,
    record) at WARNING, so an operator can keep only what was stopped or flagged by the log level alone."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("egress.decision")

    def report(self, attempt: DecidedFlow) -> None:
        level = logging.INFO if attempt.verdict.action is Enforcement.ALLOW else logging.WARNING
        if self.log.isEnabledFor(level):
            line = canonical(attempt)
            # In text, the JSON after "decision "; in JSON logs (egress.logsetup), the fields themselves. The record
            # is made here rather than by `Logger.log`, which would walk the stack for a caller nobody reads: at a
            # line per DNS query that walk was a tenth of the resolver's time.
            text = _JSON.encode(line).decode()
            if not text.isascii():  # as json.dumps writes it: a log line carries no raw bidi or separator characters
                text = json.dumps(line, separators=(",", ":"))
            handler = handler_for(self.log)
            if handler is not None:  # the same line, without a LogRecord and a Formatter (`egress.logbuffer`)
                handler.decision(self.log.name, level, text, line)
                return
            record = self.log.makeRecord(
                self.log.name, level, __file__, 0, "decision %s", (text,), None, extra={"decision": line}
            )
            self.log.handle(record)


class FanoutReporter:
    """Hands each decision to several reporters (the log line and the record store)."""

    def __init__(self, *reporters: Reporter) -> None:
        self.reporters = reporters

    def report(self, attempt: DecidedFlow) -> None:
        for reporter in self.reporters:
            reporter.report(attempt)


def canonical(attempt: DecidedFlow) -> dict[str, object]:
    """The decision line's fields: when, the flow's five-tuple with sandbox and host (enough to find the flow in a
    capture or a connection log), and the verdict; ``protocol`` and ``count`` only when they say something (another
    IP protocol's name; packets the drop logger counted but did not see logged)."""
    verdict = attempt.verdict
    line: dict[str, object] = {
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
    if attempt.protocol:
        line["protocol"] = attempt.protocol
    if attempt.count != 1:
        line["count"] = attempt.count
    if attempt.record_id:
        line["record_id"] = attempt.record_id
    return line
