"""The name lists as data, the form in which detectors receive them.

`egress.policy.lists` loads and validates the files (rules/lists/*.yaml) into these; detectors never read files
or YAML themselves (`egress.detect.names.NameLists` is built from these at start).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from egress.detect.base import Category

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Source:
    repository: str
    path: str
    commit: str
    snapshot: str


@dataclass(frozen=True, slots=True)
class NameList:
    """One validated list file."""

    file: str
    name: str
    category: Category
    protocol: str
    match: str
    """``suffix`` (a name covers itself and its subdomains) or ``exact`` (``*.name`` covers the subdomains)."""
    description: str
    sources: tuple[Source, ...]
    names: tuple[str, ...]
    addresses: tuple[Network, ...]
