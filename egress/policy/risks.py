"""Warnings about a valid policy: allowances that are legal but risky. They never fail a check.

- a host wildcard over a suffix where anyone can create names (`egress.policy.suffixes`, the Public Suffix List's
  private section);
- a network rule open on every port (``ports`` left out): anything the destination runs is reachable, SSH and
  databases included;
- a host rule that lists port 22 but does not expect ``ssh`` (red team 6: a host rule's raw streams are held to its
  ``expect``, default ``[tls, http]``, so SSH to it is refused: the policy likely meant git or a shell over SSH);
- a sandbox in ``report`` mode: nothing is blocked, only recorded (the shadow rollout, meant to end);
- a loopback source: the gateway's own traffic taken as a sandbox's (right only for a gateway tested on one host);
- a network rule that allows UDP: its datagrams are read by the UDP gate (`egress.gateway.udpgate`: VPN handshakes,
  DTLS and QUIC unless expected, pool JSON-RPC; refused and recorded), but a protocol it does not recognise (an
  obfuscated tunnel, random-looking datagrams) still passes (red team 10b);
- a network rule covering 0.0.0.0 or ``::ffff:0:0/96``: "this host" by another name (the gateway never dials or
  forwards them, red team 10b; the rule likely meant "any address").
"""

from __future__ import annotations

import ipaddress

from egress.policy.addresses import loopback
from egress.policy.model import Expect, Mode, NetworkRule, Policy
from egress.policy.suffixes import policy_warnings
from egress.policy.yamlnodes import Problem

__all__ = ["risks"]


def risks(policy: Policy, suffixes: frozenset[str]) -> list[Problem]:
    """Every warning of ``policy``, in line order, each ``file:line: field: warning: ...``."""
    found = policy_warnings(policy, suffixes)
    for sandbox in policy.sandboxes:
        if sandbox.mode is Mode.REPORT:
            found.append(Problem(policy.file, sandbox.line, f"sandboxes.{sandbox.name}.mode: warning: report mode "
                "blocks nothing (it records what enforce would block): switch to enforce once the records are "
                "clean"))  # fmt: skip
        for source in sandbox.sources:
            if loopback(source):
                why = "is the gateway's own loopback: right only for a gateway tested on one host"
                found.append(
                    Problem(policy.file, sandbox.line, f"sandboxes.{sandbox.name}.sources: warning: {source} {why}")
                )
        for host in sandbox.hosts:
            if 22 in host.ports and not host.expects(Expect.SSH):
                found.append(Problem(policy.file, host.line, f"{host.rule_id}: warning: port 22 is allowed but the "
                    "rule does not expect ssh, so SSH to it is refused at its banner: add ssh to its expect (e.g. "
                    "expect: [tls, http, ssh]) if that is what the port is for"))  # fmt: skip
        for rule in sandbox.networks:
            if not rule.ports:
                protocols = "/".join(sorted(rule.protocols))
                found.append(Problem(policy.file, rule.line, f"{rule.rule_id}: warning: {rule.network} is open on "
                    f"every {protocols} port: list the ports the destination serves"))  # fmt: skip
            found.extend(_network_surfaces(policy.file, rule))
    return sorted(found, key=lambda problem: problem.line)


_THIS_HOST = (ipaddress.IPv4Address("0.0.0.0"), ipaddress.IPv6Address("::ffff:0:0"))


def _network_surfaces(file: str, rule: NetworkRule) -> list[Problem]:
    """A network rule's UDP (read by the UDP gate, which knows only some protocols) and its covering this host by
    another name."""
    found: list[Problem] = []
    network, rule_id, line = rule.network, rule.rule_id, rule.line
    if "udp" in rule.protocols:
        ports = ",".join(map(str, sorted(rule.ports)))
        where = f"{network}:{ports}" if ports else f"{network} (every port)"
        found.append(Problem(file, line, f"{rule_id}: warning: udp to {where} is inspected datagram by datagram: "
            "WireGuard, OpenVPN, IKE, DTLS and QUIC (unless expected) and pool JSON-RPC are refused and recorded, "
            "but a tunnel or pool protocol the gateway does not recognise (obfuscated, random-looking datagrams) "
            "still passes; allow UDP only to destinations you trust with that"))  # fmt: skip
    if any(address in network for address in _THIS_HOST if address.version == network.version):
        found.append(Problem(file, line, f"{rule_id}: warning: {network} covers the gateway's own \"this host\" "
            "addresses (0.0.0.0/8, ::ffff:0:0/96): never dialled or forwarded whatever the rule says"))  # fmt: skip
    return found
