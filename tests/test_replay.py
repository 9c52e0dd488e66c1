"""Tests for egress.replay: a record made from a gateway decision, decided again under the policy that made it,
gives the same verdict (so the question was recovered whole); under a changed policy, the flips."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from egress.decide import (
    Enforcement,
    Reason,
    Verdict,
    decide_dns,
    decide_dns_answer,
    decide_dns_dropped,
    decide_drop,
    decide_finding,
    decide_fronting,
    decide_http,
    decide_raw,
    decide_tls,
    decide_unknown_source,
    decide_watched,
)
from egress.decisions import DecidedFlow
from egress.detect.base import Category, Finding
from egress.policy.loader import parse_policy
from egress.policy.model import Sandbox
from egress.record.schema import AttemptRecord, make_id
from egress.replay import Change, Kind, question_of, replay_record

CURRENT = parse_policy(
    """version: 1
sandboxes:
  agents:
    sources: [10.1.0.0/24]
    allow:
      hosts: [pypi.org:443, "*.pythonhosted.org"]
      networks:
        - {cidr: 192.0.2.0/28, ports: [5432]}
    detectors: {mining: block, tunnel: block, crypto_node: record}
"""
)
PROPOSED = parse_policy(
    """version: 1
sandboxes:
  agents:
    sources: [10.1.0.0/24]
    allow:
      hosts: [pypi.org:443, "*.pythonhosted.org", api.example.com:443, api.example.com:80]
      networks:
        - {cidr: 198.51.100.0/24, ports: [9000]}
    detectors: {mining: block, tunnel: record, crypto_node: record}
"""
)
(AGENTS,) = CURRENT.sandboxes
MINING = Finding(Category.MINING, "stratum-v1", "stratum", '{"method":"mining.subscribe"}')
TUNNEL = Finding(Category.TUNNEL, "ssh-nonstandard-port", "ssh", "SSH-2.0-OpenSSH_9.6")
DNS_TUNNEL = Finding(Category.TUNNEL, "dns-tunnel", "dns_tunnel", "encoded subdomains under t.example")
SHAPE = Finding(Category.TUNNEL, "tls-in-tls", "tlsshape", "records shaped like a TLS handshake inside TLS")

Decision = Callable[[Sandbox], Verdict]
SRC = "10.1.0.5"
# (what the gateway decided, dst, dport, transport, host): the flow the record is written of
CASES: list[tuple[str, Decision, str, int, str, str]] = [
    ("tls not allowed", lambda s: decide_tls(s, "203.0.113.9", 443, "api.example.com", False), "203.0.113.9", 443,
     "tcp", "api.example.com"),
    ("tls mismatch", lambda s: decide_tls(s, "203.0.113.9", 443, "pypi.org", False), "203.0.113.9", 443, "tcp",
     "pypi.org"),
    ("tls no sni", lambda s: decide_tls(s, "203.0.113.9", 443, None, False), "203.0.113.9", 443, "tcp", ""),
    ("http not allowed", lambda s: decide_http(s, "203.0.113.9", 80, "api.example.com", False), "203.0.113.9", 80,
     "tcp", "api.example.com"),
    ("http no host", lambda s: decide_http(s, "203.0.113.9", 80, None, False), "203.0.113.9", 80, "tcp", ""),
    ("fronting", lambda s: decide_fronting(s, "pypi.org", "evil.example"), "203.0.113.9", 443, "tcp",
     "evil.example"),
    ("raw", lambda s: decide_raw(s, "198.51.100.7", 9000, "tcp", ()), "198.51.100.7", 9000, "tcp", ""),
    ("raw with names", lambda s: decide_raw(s, "203.0.113.9", 22, "tcp", ["pypi.org"]), "203.0.113.9", 22, "tcp",
     ""),
    ("dns refused", lambda s: decide_dns(s, "api.example.com", None), "10.1.0.1", 53, "udp", "api.example.com"),
    ("dns tunnel", lambda s: decide_dns(s, "x.t.example", DNS_TUNNEL), "10.1.0.1", 53, "udp", "x.t.example"),
    ("mining", lambda s: decide_finding(s, MINING), "203.0.113.9", 3333, "tcp", ""),
    ("ssh tunnel", lambda s: decide_finding(s, TUNNEL), "203.0.113.9", 80, "tcp", ""),
    ("tls shape", lambda s: decide_watched(s, SHAPE), "192.0.2.3", 5432, "tcp", ""),
]  # fmt: skip


def _record(verdict: Verdict, dst: str, dport: int, transport: str, host: str, src: str = SRC) -> AttemptRecord:
    flow = DecidedFlow(1_700_000_000.0, "agents", src, 40000, dst, dport, transport, host, verdict)
    return AttemptRecord.of(flow, "gw", make_id(flow.ts, bytes(10)))


@pytest.mark.parametrize(("decision", "dst", "dport", "transport", "host"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_a_record_decided_again_under_its_own_policy_gives_its_verdict(
    decision: Decision, dst: str, dport: int, transport: str, host: str
) -> None:
    verdict = decision(AGENTS)
    assert verdict.recorded
    replayed = replay_record(_record(verdict, dst, dport, transport, host), CURRENT, None)
    assert replayed.problem == ""
    assert replayed.after is not None
    assert (replayed.after.action, replayed.after.reason, replayed.after.rule) == (
        verdict.action,
        verdict.reason,
        verdict.rule,
    )
    assert replayed.change is Change.SAME


@pytest.mark.parametrize(
    ("name", "change", "condition"),
    [
        ("tls not allowed", Change.UNBLOCKED, "if the gateway resolved api.example.com to 203.0.113.9"),
        ("http not allowed", Change.UNBLOCKED, "if the gateway resolved api.example.com to 203.0.113.9"),
        ("tls mismatch", Change.SAME, ""),  # the address was not the name's: still refused
        ("raw", Change.UNBLOCKED, ""),
        ("dns refused", Change.UNBLOCKED, ""),
        ("dns tunnel", Change.SAME, ""),  # tunnel: record, but the name is still allowed by no rule
        ("ssh tunnel", Change.UNBLOCKED, ""),
        ("mining", Change.SAME, ""),
        ("tls no sni", Change.SAME, ""),
    ],
)
def test_flips_under_the_proposed_policy(name: str, change: Change, condition: str) -> None:
    (_, decision, dst, dport, transport, host) = next(case for case in CASES if case[0] == name)
    record = _record(decision(AGENTS), dst, dport, transport, host)
    replayed = replay_record(record, PROPOSED, CURRENT)
    assert replayed.change is change
    assert replayed.condition.startswith(condition)


def test_a_host_removed_flips_a_recorded_would_block_back_to_blocked() -> None:
    reporting = parse_policy(CURRENT_TEXT_REPORT)
    (sandbox,) = reporting.sandboxes
    verdict = decide_tls(sandbox, "203.0.113.9", 443, "api.example.com", False)
    assert verdict.action is Enforcement.WOULD_BLOCK
    replayed = replay_record(_record(verdict, "203.0.113.9", 443, "tcp", "api.example.com"), CURRENT, None)
    assert replayed.change is Change.BLOCKED


CURRENT_TEXT_REPORT = """version: 1
sandboxes:
  agents:
    sources: [10.1.0.0/24]
    mode: report
"""


@pytest.mark.parametrize(
    ("verdict", "dst", "dport", "transport", "host", "src", "why"),
    [
        (decide_drop(AGENTS, "udp", None, "quic"), "203.0.113.9", 443, "udp", "", SRC, "dropped by nftables"),
        (decide_dns_dropped(), "10.1.0.1", 53, "udp", "", "0.0.0.0", "the kernel dropped"),
        (decide_dns_answer(AGENTS, "dns.deny_ranges", "10.0.0.1 for x"), "10.1.0.1", 53, "udp", "x.example", SRC,
         "upstream DNS answer is not recorded"),
        (decide_unknown_source("172.16.0.9"), "", 0, "tcp", "", "172.16.0.9", "source in no sandbox"),
    ],
)  # fmt: skip
def test_what_a_record_lacks_is_said_not_guessed(
    verdict: Verdict, dst: str, dport: int, transport: str, host: str, src: str, why: str
) -> None:
    record = _record(verdict, dst, dport, transport, host, src)
    replayed = replay_record(record, PROPOSED, CURRENT)
    assert replayed.change is Change.UNKNOWN and replayed.after is None
    assert replayed.problem.startswith("cannot re-decide: ") and why in replayed.problem


def test_a_spoofed_dns_question_is_decided_again() -> None:
    record = _record(decide_unknown_source("10.1.0.9"), "10.1.0.1", 53, "udp", "api.example.com", "10.9.9.9")
    question = question_of(record)
    assert not isinstance(question, str) and question.kind is Kind.DNS
    assert replay_record(record, PROPOSED, CURRENT).change is Change.SAME  # still a source in no sandbox


def test_an_evidence_of_unknown_form_is_unknown() -> None:
    verdict = Verdict(Enforcement.BLOCK, Reason.NOT_ALLOWLISTED, "default-deny", "something else")
    assert "does not say what the connection was" in str(question_of(_record(verdict, "203.0.113.9", 443, "tcp", "")))
