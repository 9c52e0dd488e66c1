"""Warnings about a valid policy: allowances that are legal but risky. They never fail a check.

- a host wildcard over a suffix where anyone can create names (`egress.policy.suffixes`, the Public Suffix List's
  private section);
- a network rule open on every port (``ports`` left out): anything the destination runs is reachable, SSH and
  databases included;
- a host rule that lists port 22 but does not expect ``ssh`` (red team 6: a host rule's raw streams are held to its
  ``expect``, default ``[tls, http]``, so SSH to it is refused: the policy likely meant git or a shell over SSH);
- a sandbox in ``report`` mode: nothing is blocked, only recorded (the shadow rollout, meant to end);
- a loopback source: the gateway's own traffic taken as a sandbox's (right only for a gateway tested on one host).
"""

from __future__ import annotations

from egress.policy.addresses import loopback
from egress.policy.model import Expect, Mode, Policy
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
    return sorted(found, key=lambda problem: problem.line)
