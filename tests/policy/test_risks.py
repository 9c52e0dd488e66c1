"""Tests for egress.policy.risks: legal but risky allowances are warned about, never refused."""

from __future__ import annotations

from egress.policy.loader import parse_policy
from egress.policy.risks import risks

POLICY = """\
version: 1
sandboxes:
  agents:
    sources: [10.0.0.0/24, 127.0.0.0/8]
    mode: report
    allow:
      hosts: ["*.github.io", pypi.org]
      networks:
        - {cidr: 192.0.2.0/24}
        - {cidr: 198.51.100.0/24, ports: [443]}
        - {cidr: "2001:db8::/32", protocols: [udp, tcp]}
  quiet:
    sources: [10.0.1.0/24]
    interface: sbx1
    allow: {networks: [{cidr: 192.0.2.0/24, ports: [5432]}]}
"""


def test_each_risk_is_one_warning_at_its_line() -> None:
    warnings = risks(parse_policy(POLICY, "p.yaml"), frozenset({"github.io"}))
    assert [(w.line, w.message.split(": warning: ")[0]) for w in warnings] == [
        (3, "sandboxes.agents.mode"),
        (3, "sandboxes.agents.sources"),
        (7, "sandboxes.agents.allow.hosts[0]"),
        (9, "sandboxes.agents.allow.networks[0]"),
        (11, "sandboxes.agents.allow.networks[2]"),
        (11, "sandboxes.agents.allow.networks[2]"),
    ]
    text = [str(w) for w in warnings]
    assert "report mode blocks nothing" in text[0] and "127.0.0.0/8 is the gateway's own loopback" in text[1]
    assert text[3] == (
        "p.yaml:9: sandboxes.agents.allow.networks[0]: warning: 192.0.2.0/24 is open on every tcp port: list the "
        "ports the destination serves"
    )
    assert "every tcp/udp port" in text[4] or "every tcp/udp port" in text[5]


def test_a_quiet_policy_has_no_warnings() -> None:
    policy = parse_policy("version: 1\nsandboxes:\n  a:\n    sources: [10.0.0.0/24]\n    allow: {hosts: [pypi.org]}\n")
    assert risks(policy, frozenset({"github.io"})) == []


def test_a_host_rule_on_port_22_that_does_not_expect_ssh_is_warned_about() -> None:
    """Red team 6: a host rule's raw streams are held to its ``expect`` (default [tls, http]), so a rule that lists
    port 22 without ``ssh`` refuses the git-over-SSH it most likely means; one that names ssh (or any), or no
    port at all, is not warned about."""
    text = """\
version: 1
sandboxes:
  agents:
    sources: [10.0.0.0/24]
    allow:
      hosts:
        - {host: github.com, ports: [22, 443]}
        - {host: gitlab.com, ports: [22, 443], expect: [tls, http, ssh]}
        - {host: db.example.com, ports: [22], expect: [any]}
        - pypi.org
"""
    warnings = risks(parse_policy(text, "p.yaml"), frozenset())
    assert [str(w) for w in warnings] == [
        "p.yaml:7: sandboxes.agents.allow.hosts[0]: warning: port 22 is allowed but the rule does not expect ssh, so "
        "SSH to it is refused at its banner: add ssh to its expect (e.g. expect: [tls, http, ssh]) if that is what "
        "the port is for"
    ]


def test_every_udp_network_rule_is_warned_about_what_the_udp_gate_does_not_see() -> None:
    """Red team 10b: a ``udp`` network rule's datagrams are read by the UDP gate, which knows some protocols only."""
    text = """\
version: 1
sandboxes:
  agents:
    sources: [10.0.0.0/24]
    allow:
      networks:
        - {cidr: 198.18.10.3/32, ports: [3478, 443], protocols: [udp]}
        - {cidr: 198.18.10.4/32, ports: [443], protocols: [tcp]}
"""
    warnings = risks(parse_policy(text, "p.yaml"), frozenset())
    assert [str(w) for w in warnings] == [
        "p.yaml:7: sandboxes.agents.allow.networks[0]: warning: udp to 198.18.10.3/32:443,3478 is inspected datagram "
        "by datagram: WireGuard, OpenVPN, IKE, DTLS and QUIC (unless expected) and pool JSON-RPC are refused and "
        "recorded, but a tunnel or pool protocol the gateway does not recognise (obfuscated, random-looking "
        "datagrams) still passes; allow UDP only to destinations you trust with that"
    ]


def test_a_network_rule_covering_this_host_by_another_name_is_warned_about() -> None:
    """Red team 10b: 0.0.0.0 and ::ffff:127.0.0.1 are the gateway itself; a catch-all rule covers them."""
    text = """\
version: 1
sandboxes:
  agents:
    sources: [10.0.0.0/24]
    allow:
      networks:
        - {cidr: 0.0.0.0/0, ports: [443]}
        - {cidr: "::/0", ports: [443]}
        - {cidr: "2001:db8::/32", ports: [443]}
        - {cidr: 1.0.0.0/8, ports: [443]}
"""
    warnings = risks(parse_policy(text, "p.yaml"), frozenset())
    assert [(w.line, "this host" in str(w)) for w in warnings] == [(7, True), (8, True)]
