"""Lookups of a sandbox's allow rules by name and by address, as fast with 100,000 rules as with ten (pure).

`Sandbox.host_rule`, `name_allowed` and `network_rule` (egress.policy.model) answer "the first rule in file order
that covers this", which a scan of the rules gives in time proportional to their number: with a policy of 100,000
hosts every DNS query and every connection paid milliseconds for it. `HostIndex` and `NetworkIndex` give the same
answer from dictionaries: exact names, wildcard domains by the name's dot-suffixes, networks by their prefix
length (the address masked to each length the rules use). Each candidate list keeps file order, and the first
candidate (by rule position) whose ports and protocol fit wins, so the answer is the scan's (tests compare both).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from egress.policy.model import Address, HostRule, NetworkRule

__all__ = ["HostIndex", "NetworkIndex"]


class HostIndex:
    """A sandbox's host rules by exact name and by wildcard domain (``*.example.com`` under ``example.com``)."""

    __slots__ = ("_exact", "_below")

    def __init__(self, rules: Sequence[HostRule]) -> None:
        self._exact: dict[str, list[tuple[int, HostRule]]] = {}
        self._below: dict[str, list[tuple[int, HostRule]]] = {}
        self.add(rules, 0)

    def add(self, rules: Sequence[HostRule], first: int) -> None:
        """Index ``rules``, the first at position ``first`` (a policy rebuilt a chunk at a time, in file order)."""
        for position, rule in enumerate(rules, first):
            if rule.pattern.startswith("*."):
                self._below.setdefault(rule.pattern[2:], []).append((position, rule))
            else:
                self._exact.setdefault(rule.pattern, []).append((position, rule))

    def candidates(self, name: str) -> list[tuple[int, HostRule]]:
        """Every rule whose pattern covers ``name`` (any port), in file order: the exact ones, and the wildcards
        of each domain ``name`` ends in after a dot (what ``name.endswith(pattern[1:])`` means)."""
        found = list(self._exact.get(name, ()))
        if self._below:
            dot = name.find(".")
            while dot != -1:
                found += self._below.get(name[dot + 1 :], ())
                dot = name.find(".", dot + 1)
        if len(found) > 1:
            found.sort(key=lambda item: item[0])
        return found

    def first(self, name: str, port: int | None) -> HostRule | None:
        """The first rule covering ``name`` on ``port`` (``None``: on some port)."""
        for _, rule in self.candidates(name):
            if port is None or not rule.ports or port in rule.ports:
                return rule
        return None


class NetworkIndex:
    """A sandbox's network rules by (IP version, prefix length, network address)."""

    __slots__ = ("_lengths", "_by")

    def __init__(self, rules: Sequence[NetworkRule]) -> None:
        self._by: dict[tuple[int, int, int], list[tuple[int, NetworkRule]]] = {}
        self._lengths: dict[int, list[int]] = {4: [], 6: []}
        self.add(rules, 0)

    def add(self, rules: Sequence[NetworkRule], first: int) -> None:
        """Index ``rules``, the first at position ``first`` (a policy rebuilt a chunk at a time, in file order)."""
        lengths = {version: set(found) for version, found in self._lengths.items()}
        for position, rule in enumerate(rules, first):
            network = rule.network
            lengths[network.version].add(network.prefixlen)
            key = (network.version, network.prefixlen, int(network.network_address))
            self._by.setdefault(key, []).append((position, rule))
        self._lengths = {version: sorted(found) for version, found in lengths.items()}

    def first(self, address: Address, port: int, protocol: str) -> NetworkRule | None:
        """The first rule whose network holds ``address`` and whose ports and protocols take ``port``, ``protocol``."""
        version, value = address.version, int(address)
        bits = 32 if version == 4 else 128
        found: list[tuple[int, NetworkRule]] = []
        for length in self._lengths[version]:
            mask = ((1 << length) - 1) << (bits - length)
            found += self._by.get((version, length, value & mask), ())
        if len(found) > 1:
            found.sort(key=lambda item: item[0])
        for _, rule in found:
            if (not rule.ports or port in rule.ports) and protocol in rule.protocols:
                return rule
        return None
