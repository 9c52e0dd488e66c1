"""Tests for egress.decide: one table of situations, each played against an enforcing and a reporting sandbox."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import ip_address

import pytest

from egress import decide
from egress.decide import (
    ANTI_SPOOFING,
    DEFAULT_DENY,
    DNS_QUERY_FORM,
    DNS_RECEIVE_BUFFER,
    DOH_CANARY_RULE,
    Enforcement,
    Reason,
    Verdict,
    decide_connection_limit,
    decide_dns,
    decide_dns_answer,
    decide_dns_dropped,
    decide_dns_malformed,
    decide_drop,
    decide_finding,
    decide_fronting,
    decide_http,
    decide_idle_limit,
    decide_idle_timeout,
    decide_raw,
    decide_tls,
    decide_unknown_source,
)
from egress.detect.base import Category, Finding, evidence
from egress.policy.loader import parse_policy
from egress.policy.model import Mode, Sandbox

SANDBOX = """\
  {name}:
    sources: [{source}]
    link_pins_sources: true
    mode: {mode}
    allow:
      hosts:
        - pypi.org:443
        - "*.pythonhosted.org"
        - {{host: github.com, ports: [22, 443]}}
      networks:
        - {{cidr: 192.0.2.0/28, ports: [5432]}}
        - {{cidr: 198.51.100.0/24, ports: [51820], protocols: [udp]}}
        - {{cidr: "2001:db8:1::/64", ports: [443]}}
        - {{cidr: 192.0.2.16/28, ports: [443], tls: any}}
        - {{cidr: 192.0.2.32/28, expect: [ssh]}}
    decrypt: [pypi.org]
    dns: {{max_name_length: 60}}
    detectors: {{mining: block, tunnel: block, crypto_node: record}}
"""
POLICY = parse_policy(
    "version: 1\nsandboxes:\n"
    + SANDBOX.format(name="enforced", source="10.1.0.0/24", mode="enforce")
    + SANDBOX.format(name="reported", source="10.2.0.0/24", mode="report")
    + "  lenient:\n    sources: [10.3.0.0/24]\n    link_pins_sources: true\n"
    + "    detectors: {mining: allow, tunnel: allow, crypto_node: allow}\n"
)
ENFORCED, REPORTED, LENIENT = POLICY.sandboxes

MINING = Finding(Category.MINING, "stratum-v1", "stratum", '{"method":"mining.subscribe"}')
TUNNEL = Finding(Category.TUNNEL, "ssh-nonstandard-port", "ssh", "SSH-2.0-OpenSSH_9.6")
NODE = Finding(Category.CRYPTO_NODE, "bitcoin-p2p", "cryptonode", "version")
DNS_TUNNEL = Finding(Category.TUNNEL, "dns-tunnel", "dns_tunnel", "encoded subdomains under t.example")
POOL_NAME = Finding(Category.MINING, "pool-domain", "names", "xmr.nanopool.org")
ICMP_TUNNEL = Finding(Category.TUNNEL, "icmp-tunnel", "icmp_tunnel", "ptunnel magic")

H = "{s}.allow.hosts"
N = "{s}.allow.networks"
Decide = Callable[[Sandbox], Verdict]
E = Enforcement

# (id, decision, action in enforce mode, reason, rule ({s}: "sandboxes.<name>"))
CASES: list[tuple[str, Decide, Enforcement, Reason | None, str]] = [
    # TLS, judged by SNI and the resolver binding
    ("tls-allowed", lambda s: decide_tls(s, "203.0.113.5", 443, "pypi.org", True), E.ALLOW, None, H + "[0]"),
    ("tls-normalised", lambda s: decide_tls(s, "203.0.113.5", 443, "PyPI.org.", True), E.ALLOW, None, H + "[0]"),
    ("tls-wildcard", lambda s: decide_tls(s, "203.0.113.6", 443, "files.pythonhosted.org", True), E.ALLOW, None, H + "[1]"),  # noqa: E501
    ("tls-wildcard-base", lambda s: decide_tls(s, "203.0.113.6", 443, "pythonhosted.org", True), E.BLOCK, Reason.NOT_ALLOWLISTED, DEFAULT_DENY),  # noqa: E501
    ("tls-wrong-port", lambda s: decide_tls(s, "203.0.113.5", 8443, "pypi.org", True), E.BLOCK, Reason.NOT_ALLOWLISTED, DEFAULT_DENY),  # noqa: E501
    ("tls-not-allowed", lambda s: decide_tls(s, "203.0.113.9", 443, "pool.example", True), E.BLOCK, Reason.NOT_ALLOWLISTED, DEFAULT_DENY),  # noqa: E501
    ("tls-spoofed-sni", lambda s: decide_tls(s, "203.0.113.9", 443, "pypi.org", False), E.BLOCK, Reason.NAME_ADDRESS_MISMATCH, H + "[0]"),  # noqa: E501
    ("tls-no-sni", lambda s: decide_tls(s, "203.0.113.9", 443, None, False), E.BLOCK, Reason.TLS_NO_SNI, DEFAULT_DENY),
    # TLS to a network rule's address: the SNI must be bound to it (tls: bound), or it is recorded (tls: any)
    ("tls-network-unbound-sni", lambda s: decide_tls(s, "2001:db8:1::5", 443, "pypi.org", False), E.BLOCK, Reason.NAME_ADDRESS_MISMATCH, N + "[2]"),  # noqa: E501
    ("tls-network-other-sni", lambda s: decide_tls(s, "2001:db8:1::5", 443, "evil.example", False), E.BLOCK, Reason.NOT_ALLOWLISTED, N + "[2]"),  # noqa: E501
    ("tls-network-no-sni", lambda s: decide_tls(s, ip_address("192.0.2.3"), 5432, "", False), E.BLOCK, Reason.TLS_NO_SNI, N + "[0]"),  # noqa: E501
    ("tls-network-ip-sni", lambda s: decide_tls(s, "192.0.2.3", 5432, "192.0.2.3", False), E.BLOCK, Reason.DIRECT_IP, N + "[0]"),  # noqa: E501
    ("tls-network-bound-sni", lambda s: decide_tls(s, "192.0.2.3", 5432, "pypi.org", True), E.ALLOW, None, N + "[0]"),
    ("tls-network-host-rule", lambda s: decide_tls(s, "2001:db8:1::5", 443, "pypi.org", True), E.ALLOW, None, H + "[0]"),  # noqa: E501
    ("tls-network-any-no-sni", lambda s: decide_tls(s, "192.0.2.17", 443, None, False), E.RECORD, Reason.TLS_NO_SNI, N + "[3]"),  # noqa: E501
    ("tls-network-any-bound", lambda s: decide_tls(s, "192.0.2.17", 443, "pypi.org", True), E.ALLOW, None, H + "[0]"),
    ("tls-network-unexpected", lambda s: decide_tls(s, "192.0.2.33", 443, None, False), E.BLOCK, Reason.NOT_ALLOWLISTED, N + "[4]"),  # noqa: E501
    ("http-network-unexpected", lambda s: decide_http(s, "192.0.2.33", 80, None, False), E.BLOCK, Reason.NOT_ALLOWLISTED, N + "[4]"),  # noqa: E501
    ("tls-ip-as-sni", lambda s: decide_tls(s, "203.0.113.9", 443, "203.0.113.9", False), E.BLOCK, Reason.DIRECT_IP, DEFAULT_DENY),  # noqa: E501
    # HTTP, judged by Host
    ("http-allowed", lambda s: decide_http(s, "203.0.113.6", 80, "files.pythonhosted.org", True), E.ALLOW, None, H + "[1]"),  # noqa: E501
    ("http-host-port", lambda s: decide_http(s, "203.0.113.6", 80, "Files.PythonHosted.org:8080", True), E.ALLOW, None, H + "[1]"),  # noqa: E501
    ("http-spoofed-host", lambda s: decide_http(s, "203.0.113.9", 80, "files.pythonhosted.org", False), E.BLOCK, Reason.NAME_ADDRESS_MISMATCH, H + "[1]"),  # noqa: E501
    ("http-not-allowed", lambda s: decide_http(s, "203.0.113.9", 80, "evil.example", True), E.BLOCK, Reason.NOT_ALLOWLISTED, DEFAULT_DENY),  # noqa: E501
    ("http-no-host", lambda s: decide_http(s, "203.0.113.9", 80, None, False), E.BLOCK, Reason.DIRECT_IP, DEFAULT_DENY),
    ("http-ip-host", lambda s: decide_http(s, "203.0.113.9", 80, "203.0.113.9:80", False), E.BLOCK, Reason.DIRECT_IP, DEFAULT_DENY),  # noqa: E501
    ("http-ipv6-host", lambda s: decide_http(s, "2001:db8:1::5", 443, "[2001:db8:1::5]:443", False), E.ALLOW, None, N + "[2]"),  # noqa: E501
    # inside intercepted TLS
    ("fronting-same", lambda s: decide_fronting(s, "pypi.org", "PyPI.org"), E.ALLOW, None, H + "[0]"),
    ("fronting-no-host", lambda s: decide_fronting(s, "pypi.org", None), E.ALLOW, None, H + "[0]"),
    ("fronting", lambda s: decide_fronting(s, "pypi.org", "evil.example"), E.BLOCK, Reason.DOMAIN_FRONTING, H + "[0]"),
    # streams with no name of their own
    ("raw-network", lambda s: decide_raw(s, "192.0.2.3", 5432, "tcp", frozenset()), E.ALLOW, None, N + "[0]"),
    ("raw-udp-network", lambda s: decide_raw(s, "198.51.100.7", 51820, "udp", ()), E.ALLOW, None, N + "[1]"),
    ("raw-tcp-not-udp", lambda s: decide_raw(s, "198.51.100.7", 51820, "tcp", ()), E.BLOCK, Reason.DIRECT_IP, DEFAULT_DENY),  # noqa: E501
    ("raw-bound-name", lambda s: decide_raw(s, "203.0.113.7", 22, "tcp", {"github.com"}), E.ALLOW, None, H + "[2]"),
    ("raw-bound-wrong-port", lambda s: decide_raw(s, "203.0.113.7", 2222, "tcp", {"github.com"}), E.BLOCK, Reason.NOT_ALLOWLISTED, DEFAULT_DENY),  # noqa: E501
    ("raw-direct-ip", lambda s: decide_raw(s, "203.0.113.9", 3333, "tcp", ()), E.BLOCK, Reason.DIRECT_IP, DEFAULT_DENY),
    # detector findings, through the per-category action
    ("finding-mining", lambda s: decide_finding(s, MINING), E.BLOCK, Reason.MINING, "{s}.detectors.mining"),
    ("finding-tunnel", lambda s: decide_finding(s, TUNNEL), E.BLOCK, Reason.TUNNEL, "{s}.detectors.tunnel"),
    ("finding-node-record", lambda s: decide_finding(s, NODE), E.RECORD, Reason.CRYPTO_NODE, "{s}.detectors.crypto_node"),  # noqa: E501
    # DNS
    ("dns-allowed", lambda s: decide_dns(s, "pypi.org.", None), E.ALLOW, None, H + "[0]"),
    ("dns-wildcard", lambda s: decide_dns(s, "files.pythonhosted.org", None), E.ALLOW, None, H + "[1]"),
    ("dns-refused", lambda s: decide_dns(s, "pool.example", None), E.BLOCK, Reason.DNS_REFUSED, DEFAULT_DENY),
    ("dns-canary", lambda s: decide_dns(s, "use-application-dns.net", None), E.BLOCK, Reason.DOH_CANARY, DOH_CANARY_RULE),  # noqa: E501
    ("dns-too-long", lambda s: decide_dns(s, "a" * 50 + ".pythonhosted.org", None), E.BLOCK, Reason.DNS_TUNNEL, "{s}.dns.max_name_length"),  # noqa: E501
    ("dns-tunnel", lambda s: decide_dns(s, "x.pythonhosted.org", DNS_TUNNEL), E.BLOCK, Reason.DNS_TUNNEL, "{s}.detectors.tunnel"),  # noqa: E501
    ("dns-pool-name", lambda s: decide_dns(s, "xmr.nanopool.org", POOL_NAME), E.BLOCK, Reason.MINING, "{s}.detectors.mining"),  # noqa: E501
    ("dns-record-allowed", lambda s: decide_dns(s, "pypi.org", NODE), E.RECORD, Reason.CRYPTO_NODE, "{s}.detectors.crypto_node"),  # noqa: E501
    ("dns-record-refused", lambda s: decide_dns(s, "node.example", NODE), E.BLOCK, Reason.DNS_REFUSED, DEFAULT_DENY),
    ("dns-answer-pinned", lambda s: decide_dns_answer(s, f"sandboxes.{s.name}.allow.hosts[1].answers", "x answered 10.0.0.1"), E.BLOCK, Reason.DNS_ANSWER, H + "[1].answers"),  # noqa: E501
    # firewall drops
    ("drop", lambda s: decide_drop(s, "udp", None, "egress drop enforced"), E.BLOCK, Reason.FIREWALL_DROP, DEFAULT_DENY),  # noqa: E501
    ("drop-icmp-tunnel", lambda s: decide_drop(s, "icmp", ICMP_TUNNEL), E.BLOCK, Reason.TUNNEL, DEFAULT_DENY),
]  # fmt: skip


@pytest.mark.parametrize("sandbox", [ENFORCED, REPORTED], ids=["enforce", "report"])
@pytest.mark.parametrize(
    ("decide", "action", "reason", "rule"), [case[1:] for case in CASES], ids=[c[0] for c in CASES]
)
def test_decisions(sandbox: Sandbox, decide: Decide, action: Enforcement, reason: Reason | None, rule: str) -> None:
    verdict = decide(sandbox)
    if sandbox.mode is Mode.REPORT and action is E.BLOCK:
        action = E.WOULD_BLOCK  # report mode: every block passes, with its reason
    assert verdict.action is action, verdict
    assert verdict.reason is reason, verdict
    assert verdict.rule == rule.format(s=f"sandboxes.{sandbox.name}"), verdict
    assert verdict.passes is (action is not E.BLOCK)
    assert verdict.recorded is (action is not E.ALLOW)
    assert (verdict.reason is None) is (verdict.action is E.ALLOW)
    assert verdict.evidence and len(verdict.evidence) <= 160


def test_every_reason_is_exercised() -> None:
    reasons = {case[3] for case in CASES} | {decide_unknown_source("10.9.9.9").reason, decide_dns_dropped().reason}
    reasons |= {decide_dns_malformed(ENFORCED, "x", "opcode 2").reason}
    reasons |= {decide_connection_limit(ENFORCED, "tcp").reason, decide_idle_limit(3, 7).reason}
    reasons |= {decide_idle_timeout(300, "nothing").reason}
    assert reasons >= set(Reason)


@pytest.mark.parametrize(
    "qname",
    ["pypi.org:443", "[pypi.org]", "pypi.org:x.evil.example", "a\\.pypi.org", "pypi..org", "", "x.pypi.org/"],
)
@pytest.mark.parametrize("sandbox", [ENFORCED, REPORTED], ids=["enforce", "report"])
def test_a_dns_name_is_judged_as_it_is_never_as_a_host_port(sandbox: Sandbox, qname: str) -> None:
    """A query name has no port or brackets: what is not a hostname is refused in every mode, never stripped."""
    verdict = decide_dns(sandbox, qname, None)
    assert (verdict.action, verdict.reason, verdict.rule) == (E.BLOCK, Reason.DNS_MALFORMED, DNS_QUERY_FORM)


def test_malformed_queries_and_kernel_drops_are_blocked_in_every_mode() -> None:
    for sandbox in (ENFORCED, REPORTED):
        verdict = decide_dns_malformed(sandbox, "a.b", "3 questions")
        assert (verdict.action, verdict.reason) == (E.BLOCK, Reason.DNS_MALFORMED) and "3 questions" in verdict.evidence
    dropped = decide_dns_dropped()
    assert (dropped.action, dropped.reason, dropped.rule) == (E.BLOCK, Reason.DNS_DROPPED, DNS_RECEIVE_BUFFER)
    assert dropped == decide_dns_dropped()  # identical: a burst's drops aggregate into one record


def test_reason_and_action_values_are_the_api() -> None:
    assert {reason.value for reason in Reason} == {
        "not-allowlisted", "tls-no-sni", "name-address-mismatch", "direct-ip", "mining", "tunnel", "crypto-node",
        "dns-refused", "dns-tunnel", "doh-canary", "spoofed-source", "firewall-drop", "domain-fronting",
        "dns-malformed", "dns-answer", "dns-dropped", "connection-limit", "idle-limit",
        "idle-timeout",
    }  # fmt: skip
    assert [action.value for action in Enforcement] == ["allow", "block", "would-block", "record"]


@pytest.mark.parametrize("finding", [MINING, TUNNEL, NODE], ids=lambda finding: finding.category.value)
def test_detector_allow_lets_it_pass_silently(finding: Finding) -> None:
    verdict = decide_finding(LENIENT, finding)
    assert verdict.action is Enforcement.ALLOW and verdict.reason is None and verdict.finding is finding
    assert verdict.rule == f"sandboxes.lenient.detectors.{finding.category.value.replace('-', '_')}"


def test_findings_are_carried() -> None:
    assert decide_finding(ENFORCED, MINING).finding is MINING
    assert "mining.subscribe" in decide_finding(ENFORCED, MINING).evidence
    assert decide_dns(ENFORCED, "x.pythonhosted.org", DNS_TUNNEL).finding is DNS_TUNNEL
    assert decide_drop(ENFORCED, "icmp", ICMP_TUNNEL).finding is ICMP_TUNNEL
    assert decide_dns(ENFORCED, "node.example", NODE).finding is NODE


def test_dns_allowed_finding_falls_through_to_the_allowlist() -> None:
    assert decide_dns(LENIENT, "xmr.nanopool.org", POOL_NAME).reason is Reason.DNS_REFUSED
    assert decide_dns(LENIENT, "use-application-dns.net", None).reason is Reason.DOH_CANARY


@pytest.mark.parametrize("source", ["10.9.9.9", ip_address("fd00::1")])
def test_unknown_source_is_always_blocked(source: str) -> None:
    verdict = decide_unknown_source(source)
    assert (verdict.action, verdict.reason, verdict.rule) == (Enforcement.BLOCK, Reason.SPOOFED_SOURCE, ANTI_SPOOFING)
    assert str(source) in verdict.evidence


def test_evidence_is_short_and_printable() -> None:
    verdict = decide_http(ENFORCED, "203.0.113.9", 80, "x" * 500 + ".example\n", True)
    assert len(verdict.evidence) <= 160 and verdict.evidence.isprintable()


@pytest.mark.parametrize(
    "text",
    ["sni ok.example to 192.0.2.1:443", " lead", "trail ", "two  spaces", "tab\there", "caf\u00e9", "x" * 200, ""],
)
def test_the_evidence_shortcut_is_evidence(text: str) -> None:
    assert decide._evidence(text) == evidence(text)
