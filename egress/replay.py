"""Replay: what a recorded attempt (or a capture's flow) would come to under another policy. Pure: no I/O.

An attempt is turned into the `Question` the gateway asked when it decided (a TLS connection and its SNI, an HTTP
request and its Host, a stream with no name, a DNS question, a detector's finding), then decided again by the
gateway's own functions in `egress.decide`, under the current policy and under the proposed one. Nothing is
copied from them: the only logic here is recovering what the gateway was asked.

A record does not always carry what the decision needs, and then the replay says so rather than guess
(`Replayed.problem`): a firewall drop is the nftables ruleset's decision, an upstream DNS answer is not recorded,
a connection from a spoofed source says nothing of what it was. One fact no record has is whether the gateway's
resolver had answered the name with the destination (the binding SNI and Host are checked against); where the
answer turns on it, the attempt is decided as if it had, and `Replayed.condition` says so.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from dataclasses import dataclass
from typing import Final

from egress.decide import (
    Reason,
    Verdict,
    decide_dns,
    decide_dns_malformed,
    decide_finding,
    decide_fronting,
    decide_http,
    decide_raw,
    decide_tls,
    decide_unknown_source,
    decide_watched,
)
from egress.detect import miningshape, tlsshape
from egress.detect.base import Category, Finding, Transport
from egress.policy.model import Policy, Sandbox
from egress.record.schema import AttemptRecord, RecordCategory


class Kind(enum.StrEnum):
    """Which of the gateway's decisions a question is for."""

    TLS = "tls"
    """A TLS ClientHello (`decide_tls`)."""
    HTTP = "http"
    """A plaintext HTTP request (`decide_http`)."""
    FRONTING = "fronting"
    """A request inside intercepted TLS (`decide_fronting`)."""
    RAW = "raw"
    """A stream with no name of its own (`decide_raw`)."""
    DNS = "dns"
    """A DNS question to the gateway's resolver (`decide_dns`)."""
    FINDING = "finding"
    """A detector's finding on a connection (`decide_finding`, `decide_watched` for the TLS shape watcher)."""
    MALFORMED = "malformed"
    """A DNS query that is no standard question (`decide_dns_malformed`: blocked whatever the policy)."""


@dataclass(frozen=True, slots=True)
class Question:
    """What the gateway was asked: enough to call its decision again."""

    kind: Kind
    src: str
    dst: str
    dport: int
    name: str | None = None
    """SNI, Host or DNS question; None when there was none."""
    bound: bool | None = None
    """Whether the resolver had answered ``name`` with ``dst``; None: not known (the record does not say)."""
    names: frozenset[str] = frozenset()
    """RAW: the names the resolver had answered with ``dst``."""
    sni: str = ""
    """FRONTING: the SNI that was allowed."""
    finding: Finding | None = None


class Change(enum.StrEnum):
    """How the proposed policy changes an attempt's fate. Values are part of the replay's JSON."""

    UNBLOCKED = "unblocked"
    """Blocked before, passes under the proposed policy."""
    BLOCKED = "blocked"
    """Passed before, blocked under the proposed policy."""
    CHANGED = "changed"
    """Passes (or is blocked) under both, but the action differs: allow, would-block, record."""
    SAME = "same"
    UNKNOWN = "unknown"
    """Cannot be decided again (`Replayed.problem` says why)."""


@dataclass(frozen=True, slots=True)
class Replayed:
    """One attempt decided again: before (the current policy's verdict, or the recorded one) and after."""

    question: Question | None
    before: Verdict | None
    after: Verdict | None
    change: Change
    problem: str = ""
    """Why it cannot be decided again (``cannot re-decide: ...``); ``""`` when it was."""
    condition: str = ""
    """What the ``after`` verdict assumes, when the record could not tell (the resolver's binding)."""


_DNS_REASONS: Final = frozenset({Reason.DNS_REFUSED, Reason.DOH_CANARY, Reason.DNS_TUNNEL})
_NAMED: Final = re.compile(r"(sni|host) (\S+) to ")
_FRONTING: Final = re.compile(r"host (\S+) inside TLS for sni (\S+)$")
_RAW: Final = re.compile(r"tcp \S+:\d+(?: \(([^)]*)\))?$")


def _finding(record: AttemptRecord) -> Finding:
    """The detector's finding a record was made of (its evidence is ``protocol: evidence``)."""
    text = record.evidence.removeprefix(f"{record.protocol}: ")
    return Finding(Category(record.category.value), record.protocol, record.detector, text)


def question_of(record: AttemptRecord) -> Question | str:
    """The question the gateway decided when it wrote ``record``, or why it cannot be told (a ``cannot
    re-decide`` text). The kind of a policy decision on TCP is read from its evidence, which `egress.decide`
    writes in a fixed form per decision (``sni NAME to``, ``host NAME to``, ``TLS without SNI``...)."""
    src, dst, dport = record.src, record.dst, record.dport
    finding = None if record.category is RecordCategory.POLICY else _finding(record)
    if record.reason is Reason.DNS_DROPPED:
        return "cannot re-decide: a query the kernel dropped (its source is not known)"
    if record.reason is Reason.IDLE_LIMIT:
        return "cannot re-decide: idle connections closed by a worker's bound (no policy decided them)"
    if record.reason is Reason.IDLE_TIMEOUT:
        return "cannot re-decide: a connection closed by a worker's idle timeout (no policy decided it)"
    if record.reason is Reason.DNS_ANSWER:
        return "cannot re-decide: the upstream DNS answer is not recorded"
    if record.reason is Reason.DNS_MALFORMED:
        return Question(Kind.MALFORMED, src, dst, dport, record.host)
    is_dns = record.dport == 53 and record.transport in {Transport.UDP, Transport.TCP}
    if record.reason in _DNS_REASONS or (is_dns and record.host and record.reason is not Reason.FIREWALL_DROP):
        return Question(Kind.DNS, src, dst, dport, record.host, finding=finding)
    if record.reason is Reason.SPOOFED_SOURCE:
        return "cannot re-decide: a connection from a source in no sandbox does not record what it was"
    if record.transport is not Transport.TCP or record.reason in (Reason.FIREWALL_DROP, Reason.CONNECTION_LIMIT):
        return "cannot re-decide: dropped by nftables (the kernel's ruleset decides; replay does not run it)"
    if finding is not None:
        return Question(Kind.FINDING, src, dst, dport, record.host or None, finding=finding)
    return _policy_question(record)


def _policy_question(record: AttemptRecord) -> Question | str:
    src, dst, dport, text = record.src, record.dst, record.dport, record.evidence
    bound = False if record.reason is Reason.NAME_ADDRESS_MISMATCH else None
    if text.startswith("TLS without SNI to ") or text.startswith("sni - to "):
        return Question(Kind.TLS, src, dst, dport, None, bound)
    if text.startswith("HTTP without Host to "):
        return Question(Kind.HTTP, src, dst, dport, None, bound)
    fronting = _FRONTING.match(text)
    if fronting is not None:
        return Question(Kind.FRONTING, src, dst, dport, fronting.group(1), sni=fronting.group(2))
    named = _NAMED.match(text)
    if named is not None:
        kind = Kind.TLS if named.group(1) == "sni" else Kind.HTTP
        return Question(kind, src, dst, dport, named.group(2), bound)
    raw = _RAW.match(text)
    if raw is not None:
        names = frozenset(name for name in (raw.group(1) or "").split(", ") if name)
        return Question(Kind.RAW, src, dst, dport, names=names)
    return f"cannot re-decide: the record does not say what the connection was (evidence {text[:60]!r})"


def _sandbox(policy: Policy, src: str) -> Sandbox | None:
    try:
        return policy.sandbox_for(ipaddress.ip_address(src.split("%", 1)[0]))
    except ValueError:
        return None


def decide(policy: Policy, question: Question, bound: bool) -> Verdict:
    """The gateway's verdict on ``question`` under ``policy`` (``bound``: what the binding check finds)."""
    sandbox = _sandbox(policy, question.src)
    if sandbox is None:
        return decide_unknown_source(question.src)
    q = question
    match q.kind:
        case Kind.TLS:
            return decide_tls(sandbox, q.dst, q.dport, q.name, bound)
        case Kind.HTTP:
            return decide_http(sandbox, q.dst, q.dport, q.name, bound)
        case Kind.FRONTING:
            return decide_fronting(sandbox, q.sni, q.name)
        case Kind.RAW:
            return decide_raw(sandbox, q.dst, q.dport, "tcp", q.names)
        case Kind.DNS:
            return decide_dns(sandbox, q.name or "", q.finding)
        case Kind.MALFORMED:
            return decide_dns_malformed(sandbox, q.name or "", "not a standard question")
        case Kind.FINDING:
            assert q.finding is not None
            watched = q.finding.detector == miningshape.NAME or q.finding.protocol in tlsshape.SUSPECTED
            return decide_watched(sandbox, q.finding) if watched else decide_finding(sandbox, q.finding)


def verdict_under(policy: Policy, question: Question) -> tuple[Verdict, str]:
    """The verdict under ``policy`` and what it assumes. A binding the question does not know is tried both
    ways: when the answer turns on it, the verdict is the one where the resolver answered the name with the
    destination (what a client that resolves through the gateway gets), with that condition named."""
    if question.bound is not None or question.kind not in {Kind.TLS, Kind.HTTP} or not question.name:
        return decide(policy, question, bool(question.bound)), ""
    resolved, unresolved = decide(policy, question, True), decide(policy, question, False)
    if resolved.passes == unresolved.passes:
        return unresolved, ""
    condition = f"if the gateway resolved {question.name} to {question.dst} (else {unresolved.action})"
    return resolved, condition


def compare(before: Verdict, after: Verdict) -> Change:
    if before.passes != after.passes:
        return Change.UNBLOCKED if after.passes else Change.BLOCKED
    return Change.SAME if before.action is after.action else Change.CHANGED


def replay_question(question: Question, proposed: Policy, current: Policy | None, recorded: Verdict | None) -> Replayed:
    """``question`` under ``proposed``, against ``current`` (or, without it, the ``recorded`` verdict)."""
    after, condition = verdict_under(proposed, question)
    if current is not None:
        before, _ = verdict_under(current, question)
    elif recorded is not None:
        before = recorded
    else:
        raise ValueError("replay needs the current policy or a recorded verdict to compare with")
    return Replayed(question, before, after, compare(before, after), condition=condition)


def recorded_verdict(record: AttemptRecord) -> Verdict:
    """The verdict a record was written with."""
    finding = None if record.category is RecordCategory.POLICY else _finding(record)
    return Verdict(record.action, record.reason, record.rule, record.evidence, finding)


def replay_record(record: AttemptRecord, proposed: Policy, current: Policy | None) -> Replayed:
    """One record decided again (`question_of`, `replay_question`); `Change.UNKNOWN` with the problem when the
    record does not carry what the decision needs."""
    question = question_of(record)
    if isinstance(question, str):
        return Replayed(None, recorded_verdict(record), None, Change.UNKNOWN, problem=question)
    return replay_question(question, proposed, current, recorded_verdict(record))
