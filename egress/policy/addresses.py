"""Checks on the networks a policy names, beyond their syntax: which source networks a gateway can take.

A source address must belong to exactly one sandbox, and be an address a sandbox can have:

- no two source networks overlap, within one sandbox or across sandboxes, with an IPv4-mapped IPv6 network
  (``::ffff:10.0.0.0/104``) taken as the IPv4 network it is (``10.0.0.0/8``): a dual-stack socket reports an IPv4
  peer as ``::ffff:a.b.c.d``, so the two name the same hosts;
- a catch-all source (``0.0.0.0/0``, ``::/0``, ``::ffff:0:0/96``) makes every address on the sandbox's interface
  that sandbox, so anti-spoofing no longer tells sandboxes apart: it needs ``any_source: true`` beside it;
- the gateway's own addresses are not sources: those the operator names (``egress rules check
  --gateway-address``: the uplink's, the management network's) are refused; the check cannot know them otherwise,
  since it runs anywhere (CI, a laptop), not only on the gateway. The gateway's sandbox-side address lies inside
  the sandbox's subnet by design, so it is not one to name. Loopback is only warned about (`egress.policy.risks`):
  a gateway tested on one host (the test suite, a developer's machine) takes its own loopback as a sandbox.

Every function is pure; the loader turns what they find into problems at the file's lines.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from egress.policy.model import Address, Network

__all__ = ["Placed", "as_ipv4", "catch_all", "gateway_problems", "loopback", "overlaps", "zone_id"]

_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_LOOPBACK = (ipaddress.IPv4Network("127.0.0.0/8"), ipaddress.IPv6Network("::1/128"))


@dataclass(frozen=True, slots=True)
class Placed:
    """A source network where the file names it."""

    sandbox: str
    network: Network
    line: int
    path: str
    """Field path, e.g. ``sandboxes.agents.sources[1]``."""


def zone_id(network: Network) -> str | None:
    """The IPv6 zone id (``%vlan42``) a network was written with, if any: nftables cannot take one."""
    if isinstance(network, ipaddress.IPv6Network):
        return network.network_address.scope_id
    return None


def as_ipv4(network: Network) -> Network:
    """An IPv4-mapped IPv6 network as the IPv4 network it names; any other network unchanged."""
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96 and network.subnet_of(_MAPPED):
        low = int(network.network_address) & 0xFFFFFFFF
        return ipaddress.IPv4Network((low, network.prefixlen - 96))
    return network


def catch_all(network: Network) -> bool:
    """Whether ``network`` is every address of its family (IPv4-mapped ``::ffff:0:0/96`` counts as IPv4's)."""
    return as_ipv4(network).prefixlen == 0


def _shown(network: Network) -> str:
    plain = as_ipv4(network)
    return f"{network} (IPv4-mapped: {plain})" if plain is not network else str(network)


def overlaps(sources: Sequence[Placed]) -> list[tuple[Placed, str]]:
    """Each source that overlaps another, with a message, reported at whichever of the two comes later in the
    file. One sweep over the networks sorted by first address: every network that starts inside the widest
    network seen so far overlaps that one."""
    order = {id(placed): index for index, placed in enumerate(sources)}

    def span(placed: Placed) -> tuple[int, int, int]:
        plain = as_ipv4(placed.network)
        return plain.version, int(plain.network_address), int(plain.broadcast_address)

    def report(one: Placed, other: Placed) -> None:
        later, earlier = (one, other) if order[id(one)] > order[id(other)] else (other, one)
        same = "" if later.sandbox == earlier.sandbox else f" of sandbox {earlier.sandbox!r}"
        found.append((later, f"{later.path}: {_shown(later.network)} overlaps {_shown(earlier.network)}"
                             f"{same} ({earlier.path}, line {earlier.line})"))  # fmt: skip

    found: list[tuple[Placed, str]] = []
    widest: Placed | None = None
    previous: Placed | None = None
    for placed in sorted(sources, key=lambda p: (span(p)[0], span(p)[1], -span(p)[2], order[id(p)])):
        version, low, high = span(placed)
        if widest is not None and span(widest)[0] == version and low <= span(widest)[2]:
            report(placed, widest)
            if previous is not None and previous is not widest and low <= span(previous)[2]:
                report(placed, previous)  # the nearest one too, so two networks inside a third are both named
        if widest is None or span(widest)[0] != version or high > span(widest)[2]:
            widest = placed
        previous = placed
    return found


def loopback(network: Network) -> bool:
    """Whether ``network`` lies in loopback (IPv4-mapped counts): the gateway host's own traffic."""
    plain = as_ipv4(network)
    return any(plain.version == lo.version and plain.subnet_of(lo) for lo in _LOOPBACK)  # type: ignore[arg-type]


def gateway_problems(placed: Placed, gateway: Iterable[Address], any_source: bool) -> list[str]:
    """Why ``placed`` names one of the gateway's own addresses ``gateway`` (none for a confirmed catch-all, which
    names every address on purpose)."""
    if any_source and catch_all(placed.network):
        return []
    network = as_ipv4(placed.network)
    return [
        f"{placed.path}: {placed.network} contains {address}, an address of the gateway (--gateway-address)"
        for address in gateway
        if address.version == network.version and address in network
    ]
