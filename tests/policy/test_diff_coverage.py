"""Every field of the policy's schema shows in `egress rules diff` (egress.policy.diff): a field added to the
model without a diff line fails here, named, until it gets one (or is listed as no change, with the reason)."""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
from collections.abc import Callable
from typing import Any

import pytest

from egress.policy.diff import Kind, diff, format_text
from egress.policy.loader import parse_policy
from egress.policy.model import (
    DEFAULT_EXPECT,
    DetectorActions,
    DnsLimits,
    Expect,
    FlowLogSettings,
    HostRule,
    NetworkRule,
    Policy,
    Quarantine,
    Retention,
    Sandbox,
)

BASE = parse_policy("""\
version: 1
sandboxes:
  agents:
    sources: [10.20.0.0/24]
    allow:
      hosts: [{host: pypi.org, ports: [443], answers: [192.0.2.0/24]}]
      networks: [{cidr: 198.51.100.0/24, ports: [5432]}]
    quarantine: {after: 3, within: 600, categories: [mining], webhook: "https://hooks.example/a"}
""")
NOT_A_CHANGE = {
    (Policy, "file"): "where the text was read from",
    (Policy, "version"): "the schema's version: only 1 loads",
    (Sandbox, "line"): "where it is written",
    (Sandbox, "_index"): "a cache of the rules' lookups",
    (HostRule, "rule_id"): "where it is written",
    (HostRule, "line"): "where it is written",
    (NetworkRule, "rule_id"): "where it is written",
    (NetworkRule, "line"): "where it is written",
    (Quarantine, "line"): "where it is written",
}
NESTED: dict[tuple[type, str], type] = {
    (Policy, "retention"): Retention,
    (Policy, "flow_log"): FlowLogSettings,
    (Sandbox, "dns"): DnsLimits,
    (Sandbox, "detectors"): DetectorActions,
    (Sandbox, "quarantine"): Quarantine,
}
"""Fields whose own fields each show as ``FIELD.SUBFIELD``."""
NET = ipaddress.ip_network("203.0.113.0/24")


def _sandbox(policy: Policy, **changed: Any) -> Policy:
    return dataclasses.replace(policy, sandboxes=(dataclasses.replace(policy.sandboxes[0], **changed),))


def _host(**changed: Any) -> Policy:
    sandbox = BASE.sandboxes[0]
    return _sandbox(BASE, hosts=(dataclasses.replace(sandbox.hosts[0], **changed),))


def _network(**changed: Any) -> Policy:
    sandbox = BASE.sandboxes[0]
    return _sandbox(BASE, networks=(dataclasses.replace(sandbox.networks[0], **changed),))


OTHER: dict[tuple[type, str], Callable[[], Policy]] = {
    (Policy, "sandboxes"): lambda: dataclasses.replace(BASE, sandboxes=()),
    (Policy, "on_apply"): lambda: dataclasses.replace(BASE, on_apply=_next(BASE.on_apply)),
    (Sandbox, "name"): lambda: _sandbox(BASE, name="renamed"),
    (Sandbox, "sources"): lambda: _sandbox(BASE, sources=(NET,)),
    (Sandbox, "interface"): lambda: _sandbox(BASE, interface="eth9"),
    (Sandbox, "mode"): lambda: _sandbox(BASE, mode=_next(BASE.sandboxes[0].mode)),
    (Sandbox, "hosts"): lambda: _sandbox(BASE, hosts=()),
    (Sandbox, "networks"): lambda: _sandbox(BASE, networks=()),
    (Sandbox, "decrypt"): lambda: _sandbox(BASE, decrypt=("pypi.org",)),
    (Sandbox, "upgrades"): lambda: _sandbox(BASE, upgrades=("h2c",)),
    (Sandbox, "any_source"): lambda: _sandbox(BASE, any_source=True),
    (Sandbox, "flow_log"): lambda: _sandbox(BASE, flow_log=True),
    (Sandbox, "max_connections"): lambda: _sandbox(BASE, max_connections=64),
    (Sandbox, "link_pins_sources"): lambda: _sandbox(BASE, link_pins_sources=True),
    (HostRule, "pattern"): lambda: _host(pattern="files.pythonhosted.org"),
    (HostRule, "ports"): lambda: _host(ports=frozenset({8443})),
    (HostRule, "answers"): lambda: _host(answers=(NET,)),
    (HostRule, "expect"): lambda: _host(expect=DEFAULT_EXPECT | {Expect.SSH}),
    (NetworkRule, "network"): lambda: _network(network=NET),
    (NetworkRule, "ports"): lambda: _network(ports=frozenset()),
    (NetworkRule, "protocols"): lambda: _network(protocols=frozenset({"tcp", "udp"})),
    (NetworkRule, "expect"): lambda: _network(expect=BASE.sandboxes[0].networks[0].expect ^ {Expect.SSH}),
    (NetworkRule, "tls"): lambda: _network(tls=_next(BASE.sandboxes[0].networks[0].tls)),
}
"""Per field of the model: a policy that differs from BASE in that field alone."""


def _next(value: enum.Enum) -> Any:
    members = list(type(value))
    return members[(members.index(value) + 1) % len(members)]


def _changed(value: Any) -> Any:
    """Another value of a nested field's type (fails for a type this test does not know yet: teach it)."""
    if isinstance(value, enum.Enum):
        return _next(value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "x" if value else "https://hooks.example/b"
    if isinstance(value, frozenset):
        return value ^ {"tunnel"}
    if isinstance(value, tuple):
        return (*value, NET)
    raise AssertionError(f"no other value for {value!r}: teach tests/policy/test_diff_coverage.py its type")


def _parent(owner: type) -> tuple[Policy, Callable[[Any], Policy]]:
    """BASE and how to put a changed ``owner`` object into it."""
    if owner is Retention:
        return BASE, lambda value: dataclasses.replace(BASE, retention=value)
    if owner is FlowLogSettings:
        return BASE, lambda value: dataclasses.replace(BASE, flow_log=value)
    field = {DnsLimits: "dns", DetectorActions: "detectors", Quarantine: "quarantine"}[owner]
    return BASE, lambda value: _sandbox(BASE, **{field: value})


@pytest.mark.parametrize("owner", [Policy, Sandbox, HostRule, NetworkRule], ids=lambda t: t.__name__)
def test_every_field_has_a_diff_case_or_a_reason(owner: type) -> None:
    fields = {field.name for field in dataclasses.fields(owner)}
    known = {name for (cls, name) in (*OTHER, *NOT_A_CHANGE, *NESTED) if cls is owner}
    assert fields - known == set(), f"{owner.__name__}: new fields without a line in `egress rules diff`"
    assert known - fields == set()


@pytest.mark.parametrize("key", list(OTHER), ids=lambda key: f"{key[0].__name__}.{key[1]}")
def test_a_changed_field_shows(key: tuple[type, str]) -> None:
    changes = diff(BASE, OTHER[key]())
    assert changes, f"{key[0].__name__}.{key[1]} changed, and the diff is empty"
    assert "no change" not in format_text(changes, "a", "b")


NESTED_FIELDS = [(owner, field.name) for owner in NESTED.values() for field in dataclasses.fields(owner)]


@pytest.mark.parametrize("key", NESTED_FIELDS, ids=lambda key: f"{key[0].__name__}.{key[1]}")
def test_a_changed_nested_field_shows_by_name(key: tuple[type, str]) -> None:
    owner, name = key
    if (owner, name) in NOT_A_CHANGE:
        return
    prefix = next(field for (_, field), cls in NESTED.items() if cls is owner)
    base, put = _parent(owner)
    current = getattr(base, prefix) if owner in (Retention, FlowLogSettings) else getattr(base.sandboxes[0], prefix)
    changes = diff(base, put(dataclasses.replace(current, **{name: _changed(getattr(current, name))})))
    assert [(c.field, c.kind) for c in changes] == [(f"{prefix}.{name}", Kind.CHANGED)]


def test_quarantine_added_and_removed_show_whole() -> None:
    without = _sandbox(BASE, quarantine=None)
    [added] = diff(without, BASE)
    assert (added.field, added.kind, added.new) == (
        "quarantine", Kind.ADDED, "after 3 within 600 s of mining, webhook https://hooks.example/a"
    )  # fmt: skip
    [removed] = diff(BASE, without)
    assert (removed.field, removed.kind, removed.new) == ("quarantine", Kind.REMOVED, None)


def test_a_new_sandbox_with_a_quarantine_shows_it() -> None:
    fresh = dataclasses.replace(BASE.sandboxes[0], name="fresh", sources=(NET,))
    changes = diff(_sandbox(BASE), dataclasses.replace(BASE, sandboxes=(*BASE.sandboxes, fresh)))
    assert "quarantine" in [c.field for c in changes]
