"""What changes between two loaded policies, in terms a person reads: `diff` (pure) and its text form.

A change is data (`Change`): the sandbox it is in (``""`` for the policy as a whole), the field, whether something
was added, removed or changed, and the old and new values as text. Rules are compared by what they allow, not by
their place in the file: moving a host rule up, or writing ``pypi.org:443`` as ``{host: pypi.org, ports: [443]}``,
is no change. A rule whose ports (or answers, expect, tls) change shows as the old rule removed and the new one
added, which is what it means for the traffic.

`egress rules diff OLD NEW` prints `format_text` or, with ``-o json``, `as_json`.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from egress.policy.model import (
    DEFAULT_EXPECT,
    DetectorActions,
    DnsLimits,
    HostRule,
    NetworkRule,
    Policy,
    Quarantine,
    Sandbox,
)

__all__ = ["Change", "Kind", "as_json", "diff", "format_text"]


class Kind(enum.StrEnum):
    ADDED = "added"
    REMOVED = "removed"
    CHANGED = "changed"


_MARK = {Kind.ADDED: "+", Kind.REMOVED: "-", Kind.CHANGED: "~"}


@dataclass(frozen=True, slots=True)
class Change:
    sandbox: str
    """The sandbox's name; ``""`` for a change to the policy as a whole (retention)."""
    field: str
    """``sandbox``, ``sources``, ``mode``, ``hosts``, ``networks``, ``decrypt``, ``upgrades``, ``detectors.mining``,
    ``dns.max_name_length``, ``quarantine``, ``quarantine.after``, ``retention.max_age_days``..."""
    kind: Kind
    old: str | None
    new: str | None


def _ports(ports: frozenset[int]) -> str:
    return ",".join(str(port) for port in sorted(ports)) if ports else "any port"


def host_text(rule: HostRule) -> str:
    """A host rule as one line: ``pypi.org (any port)``, ``*.example.com (443) answers 192.0.2.0/24``,
    ``git.example.com (22) expect ssh`` (its ``expect`` shown only where it is not the default)."""
    answers = f" answers {', '.join(str(n) for n in rule.answers)}" if rule.answers else ""
    expect = f" expect {','.join(sorted(e.value for e in rule.expect))}" if rule.expect != DEFAULT_EXPECT else ""
    return f"{rule.pattern} ({_ports(rule.ports)}){answers}{expect}"


def network_text(rule: NetworkRule) -> str:
    """A network rule as one line: ``192.0.2.0/24 tcp (5432) expect http,tls tls bound``."""
    protocols = "/".join(sorted(rule.protocols))
    expect = ",".join(sorted(e.value for e in rule.expect))
    return f"{rule.network} {protocols} ({_ports(rule.ports)}) expect {expect} tls {rule.tls.value}"


def _sets(sandbox: str, field: str, old: Iterable[str], new: Iterable[str]) -> list[Change]:
    before, after = list(dict.fromkeys(old)), list(dict.fromkeys(new))
    removed = [Change(sandbox, field, Kind.REMOVED, item, None) for item in before if item not in set(after)]
    added = [Change(sandbox, field, Kind.ADDED, None, item) for item in after if item not in set(before)]
    return removed + added


def _value(value: object) -> str:
    if isinstance(value, frozenset):
        return "[" + ", ".join(sorted(str(item) for item in value)) + "]"
    if isinstance(value, tuple):
        return "[" + ", ".join(str(item) for item in value) + "]"
    if isinstance(value, enum.Enum):
        return str(value.value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def _fields(sandbox: str, prefix: str, old: Any, new: Any, skip: frozenset[str] = frozenset()) -> list[Change]:
    """Each dataclass field of ``old`` and ``new`` (DNS limits, detector actions, retention) that differs, but
    those in ``skip`` (where in the file it is written, which is no change)."""
    changes = []
    for field in dataclasses.fields(old):
        if field.name in skip:
            continue
        before, after = getattr(old, field.name), getattr(new, field.name)
        if before != after:
            changes.append(Change(sandbox, f"{prefix}.{field.name}", Kind.CHANGED, _value(before), _value(after)))
    return changes


def quarantine_text(rule: Quarantine) -> str:
    """A quarantine rule as one line: ``after 3 within 600 s of mining, tunnel, webhook https://...``."""
    webhook = f", webhook {rule.webhook}" if rule.webhook else ""
    return f"after {rule.after} within {rule.within} s of {', '.join(sorted(rule.categories))}{webhook}"


def _quarantine(name: str, old: Quarantine | None, new: Quarantine | None) -> list[Change]:
    """Added or removed as a whole; else each of its fields that changed (``quarantine.after``...)."""
    if old is None and new is None:
        return []
    if old is None or new is None:
        kind = Kind.ADDED if old is None else Kind.REMOVED
        before, after = (quarantine_text(old) if old else None), (quarantine_text(new) if new else None)
        return [Change(name, "quarantine", kind, before, after)]
    return _fields(name, "quarantine", old, new, skip=frozenset({"line"}))


def _summary(sandbox: Sandbox) -> str:
    sources = ", ".join(str(network) for network in sandbox.sources)
    return f"{sandbox.mode.value}, sources {sources}, {len(sandbox.hosts)} hosts, {len(sandbox.networks)} networks"


def _sandbox(old: Sandbox, new: Sandbox) -> list[Change]:
    name = old.name
    changes: list[Change] = []
    for field in ("mode", "interface", "any_source", "flow_log", "max_connections", "link_pins_sources"):
        before, after = getattr(old, field), getattr(new, field)
        if before != after:
            changes.append(Change(name, field, Kind.CHANGED, _value(before), _value(after)))
    changes += _sets(name, "sources", (str(n) for n in old.sources), (str(n) for n in new.sources))
    changes += _sets(name, "hosts", map(host_text, old.hosts), map(host_text, new.hosts))
    changes += _sets(name, "networks", map(network_text, old.networks), map(network_text, new.networks))
    changes += _sets(name, "decrypt", old.decrypt, new.decrypt)
    changes += _sets(name, "upgrades", old.upgrades, new.upgrades)
    changes += _fields(name, "detectors", old.detectors, new.detectors)
    changes += _fields(name, "dns", old.dns, new.dns)
    changes += _quarantine(name, old.quarantine, new.quarantine)
    return changes


def diff(old: Policy, new: Policy) -> list[Change]:
    """Every change from ``old`` to ``new``: sandboxes removed, then those kept (in ``new``'s order) field by
    field, then sandboxes added, then the policy's own settings. Empty when they allow the same."""
    before = {sandbox.name: sandbox for sandbox in old.sandboxes}
    after = {sandbox.name: sandbox for sandbox in new.sandboxes}
    changes = [Change(n, "sandbox", Kind.REMOVED, _summary(s), None) for n, s in before.items() if n not in after]
    for name, sandbox in after.items():
        if name in before:
            changes += _sandbox(before[name], sandbox)
    for name, sandbox in after.items():
        if name not in before:  # what it allows, as added to a sandbox that allowed nothing (and kept the defaults)
            changes.append(Change(name, "sandbox", Kind.ADDED, None, _summary(sandbox)))
            empty = dataclasses.replace(sandbox, sources=(), hosts=(), networks=(), decrypt=(), upgrades=(),
                                        dns=DnsLimits(), detectors=DetectorActions(), quarantine=None)  # fmt: skip
            changes += [c for c in _sandbox(empty, sandbox) if c.field != "sources"]
    changes += _fields("", "retention", old.retention, new.retention)
    changes += _fields("", "flow_log", old.flow_log, new.flow_log)
    if old.on_apply is not new.on_apply:
        changes.append(Change("", "on_apply", Kind.CHANGED, old.on_apply.value, new.on_apply.value))
    return changes


def format_text(changes: list[Change], old_file: str, new_file: str) -> str:
    """Changes grouped by sandbox, one per line (``+`` added, ``-`` removed, ``~`` changed)."""
    if not changes:
        return f"{old_file} -> {new_file}: no change\n"
    lines = [f"{old_file} -> {new_file}: {len(changes)} change{'s' * (len(changes) != 1)}"]
    current: str | None = None
    for change in changes:
        if change.sandbox != current:
            current = change.sandbox
            lines.append(f"sandbox {current}:" if current else "policy:")
        if change.kind is Kind.CHANGED:
            body = f"{change.field}: {change.old} -> {change.new}"
        else:
            body = f"{change.field}: {change.new if change.kind is Kind.ADDED else change.old}"
        lines.append(f"  {_MARK[change.kind]} {body}")
    return "\n".join(lines) + "\n"


def as_json(changes: list[Change], old_file: str, new_file: str) -> dict[str, Any]:
    """The changes as a JSON-ready document: ``{"old", "new", "changes": [{sandbox, field, change, old, new}]}``."""
    return {
        "old": old_file,
        "new": new_file,
        "changes": [
            {"sandbox": c.sandbox, "field": c.field, "change": c.kind.value, "old": c.old, "new": c.new}
            for c in changes
        ],
    }
