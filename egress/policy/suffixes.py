"""Warnings about a valid policy: an ``allow.hosts`` wildcard over a suffix where anyone can create names.

``*.github.io`` allows every GitHub Pages site, so an agent can create one, run its DNS or web server there and
reach it through the policy (tunnels, exfiltration, any address its zone answers). The Public Suffix List's
private section lists such suffixes (hosting platforms, dynamic DNS); a vendored snapshot with its date is in
``rules/psl/`` (`egress.shipped.public_suffixes`), taken from the list the maintained PyPI package
``publicsuffixlist`` ships (refreshed with each release of the list). The package itself is not a dependency:
the snapshot is the same data, reviewed in a commit, and the check needs no network or newer install to run.

A wildcard warns when its domain is such a suffix or has one below it (``*.amazonaws.com`` covers
``s3.amazonaws.com``). Pinning the rule's ``answers`` limits the addresses, not the names: the warning stands.
`egress rules check` prints these (`egress.policy.risks` adds the other warnings); they never fail a check.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from egress.policy.model import Policy
from egress.policy.yamlnodes import Problem


def load_suffixes(path: str | Path) -> frozenset[str]:
    """The suffixes of a Public Suffix List file, IDNA-encoded, lowercase; ``*.x`` kept as written; ``!`` rules
    (exceptions: a name that is not a suffix) left out."""
    suffixes: set[str] = set()
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        entry = raw.split()[0] if raw.split() else ""
        if not entry or entry.startswith(("//", "!")):
            continue
        wildcard = entry.startswith("*.")
        base = entry[2:] if wildcard else entry
        try:
            encoded = base.encode("idna").decode("ascii").lower()
        except UnicodeError:
            continue  # a label Python's IDNA 2003 codec refuses cannot be written in a policy either
        suffixes.add("*." + encoded if wildcard else encoded)
    return frozenset(suffixes)


def open_suffixes(domain: str, suffixes: frozenset[str]) -> list[str]:
    """The public suffixes a wildcard over ``domain`` covers: ``domain`` itself or any suffix below it."""
    found = []
    for suffix in suffixes:
        base = suffix[2:] if suffix.startswith("*.") else suffix
        if base == domain or base.endswith("." + domain):
            found.append(suffix)
        elif suffix.startswith("*.") and domain.endswith("." + base) and domain.count(".") == base.count(".") + 1:
            found.append(suffix)  # *.x: every name one label below x is a suffix, so domain is one
    return sorted(found)


def policy_warnings(policy: Policy, suffixes: frozenset[str]) -> list[Problem]:
    """One warning per wildcard host rule over an open suffix, with the rule's line."""
    warnings: list[Problem] = []
    for sandbox in policy.sandboxes:
        for rule in sandbox.hosts:
            if not rule.pattern.startswith("*."):
                continue
            found = open_suffixes(rule.pattern[2:], suffixes)
            if found:
                shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
                text = (
                    f"{rule.rule_id}: warning: {rule.pattern!r} covers public suffix {shown} (Public Suffix List, "
                    "private section): anyone can create names there and run their DNS; allow the exact names"
                )
                warnings.append(Problem(policy.file, rule.line, text))
    return warnings


def format_warnings(warnings: Iterable[Problem]) -> str:
    return "\n".join(str(warning) for warning in warnings)
