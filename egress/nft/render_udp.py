"""A sandbox's allowed UDP networks as nftables rules (pure; `egress.nft.render` places them).

Grouped by IP version and port set; a group of `UDP_SET_MIN` networks or more is one interval set and one rule,
so a policy of 100,000 networks renders to a short script that ``nft -f`` loads in one transaction, and each
packet costs one set lookup. The same groups give the rules of both directions: towards the networks every
packet jumps to `UDP_GATE_CHAIN`, whose one rule queues it to the gateway's UDP gate (`egress.nft.xtqueue`,
`egress.gateway.udpgate`: read and judged, never accepted unread); back from them only established flows pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from egress.nft.names import set_id
from egress.policy.model import NetworkRule, Sandbox

__all__ = ["UDP_GATE_CHAIN", "UDP_SET_MIN", "UdpGroup", "udp_groups", "udp_lines"]

_COMMENT_UNSAFE = re.compile(r'["\\\x00-\x1f]')


def _one_of(values: list[int]) -> str:
    items = [str(v) for v in values]
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


UDP_GATE_CHAIN: Final = "udp_gate"
"""The regular chain a sandbox's allowed UDP jumps to. Rendered empty (a packet returns from it to its sandbox's
drop: fail closed); the gateway appends the one rule nft cannot write on every kernel, the xtables ``NFQUEUE``
target without bypass (`egress.nft.xtqueue`), right after loading the table."""

UDP_SET_MIN: Final = 8
"""A sandbox's UDP networks with the same ports and IP version go into one interval set once there are this many
(one rule and one set lookup, however many networks: a policy of 100,000 networks is one short script); fewer keep
a rule each, with the rule's place in the file as its comment."""


@dataclass(frozen=True, slots=True)
class UdpGroup:
    """A sandbox's UDP network rules of one IP version and one port set: one forward rule (and one reply rule)."""

    version: int
    ports: frozenset[int]
    rules: tuple[NetworkRule, ...]
    set_name: str | None
    """The interval set holding the networks (`UDP_SET_MIN` rules or more), else None: the networks inline."""


def udp_groups(sandbox: Sandbox) -> list[UdpGroup]:
    """The sandbox's UDP network rules grouped by (IP version, ports), in the order of each group's first rule."""
    grouped: dict[tuple[int, frozenset[int]], list[NetworkRule]] = {}
    for rule in sandbox.networks:
        if "udp" in rule.protocols:
            grouped.setdefault((rule.network.version, rule.ports), []).append(rule)
    groups = []
    for index, ((version, ports), rules) in enumerate(grouped.items()):
        name = f"udp{version}_{set_id(sandbox.name)}_{index}" if len(rules) >= UDP_SET_MIN else None
        groups.append(UdpGroup(version, ports, tuple(rules), name))
    return groups


def _comment(text: str) -> str:
    return _COMMENT_UNSAFE.sub("_", text)[:127]  # the kernel keeps at most 128 bytes with the NUL


def udp_lines(group: UdpGroup, reply: bool) -> list[str]:
    """The rules for a group's UDP: towards the networks (``reply`` False: every packet, the first and the
    established alike, jumps to `UDP_GATE_CHAIN`, to be queued and judged; a policy that no longer allows a flow
    stops it at once), or back from them (``reply``: only packets of a flow the sandbox opened, ``ct state
    established``, accepted)."""
    family = "ip" if group.version == 4 else "ip6"
    address, port = ("saddr", "sport") if reply else ("daddr", "dport")
    ports = f"udp {port} {_one_of(sorted(group.ports))}" if group.ports else "meta l4proto udp"
    state = " ct state established accept" if reply else f" jump {UDP_GATE_CHAIN}"
    if group.set_name is not None:
        first, count = group.rules[0].rule_id, len(group.rules)
        comment = _comment(f"{first} and {count - 1} more UDP networks")
        return [f'{family} {address} @{group.set_name} {ports}{state} comment "{comment}"']
    return [f'{family} {address} {r.network} {ports}{state} comment "{_comment(r.rule_id)}"' for r in group.rules]
