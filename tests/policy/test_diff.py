"""Tests for egress.policy.diff: changes between two policies as a person reads them, rules compared by meaning."""

from __future__ import annotations

import json

from egress.policy.diff import Change, Kind, as_json, diff, format_text
from egress.policy.loader import parse_policy

OLD = """\
version: 1
sandboxes:
  agents:
    sources: [10.20.0.0/24]
    allow:
      hosts: [pypi.org, "files.pythonhosted.org:443", "*.github.io"]
      networks: [{cidr: 192.0.2.0/24, ports: [5432]}]
    dns: {max_name_length: 180}
  gone:
    sources: [10.30.0.0/24]
    interface: sbx3
"""
NEW = """\
version: 1
retention: {max_age_days: 7}
sandboxes:
  agents:
    sources: [10.20.0.0/24, "fd00:20::/64"]
    mode: report
    allow:
      hosts: [{host: files.pythonhosted.org, ports: [443]}, pypi.org:443, "*.github.io"]
      networks: [{cidr: 192.0.2.0/24, ports: [5432], protocols: [tcp, udp]}]
    decrypt: [pypi.org]
    dns: {max_name_length: 120}
    detectors: {mining: record}
  fresh:
    sources: [10.40.0.0/24]
    interface: sbx4
    allow: {hosts: [huggingface.co]}
"""


def test_every_kind_of_change_is_named() -> None:
    changes = diff(parse_policy(OLD), parse_policy(NEW))
    assert [(c.sandbox, c.field, c.kind.value, c.old, c.new) for c in changes] == [
        ("gone", "sandbox", "removed", "enforce, sources 10.30.0.0/24, 0 hosts, 0 networks", None),
        ("agents", "mode", "changed", "enforce", "report"),
        ("agents", "sources", "added", None, "fd00:20::/64"),
        ("agents", "hosts", "removed", "pypi.org (any port)", None),
        ("agents", "hosts", "added", None, "pypi.org (443)"),
        ("agents", "networks", "removed", "192.0.2.0/24 tcp (5432) expect http,tls tls bound", None),
        ("agents", "networks", "added", None, "192.0.2.0/24 tcp/udp (5432) expect http,tls tls bound"),
        ("agents", "decrypt", "added", None, "pypi.org"),
        ("agents", "detectors.mining", "changed", "block", "record"),
        ("agents", "dns.max_name_length", "changed", "180", "120"),
        ("fresh", "sandbox", "added", None, "enforce, sources 10.40.0.0/24, 1 hosts, 0 networks"),
        ("fresh", "hosts", "added", None, "huggingface.co (any port)"),
        ("", "retention.max_age_days", "changed", "30", "7"),
    ]


def test_the_same_rules_written_otherwise_are_no_change() -> None:
    moved = OLD.replace(
        'hosts: [pypi.org, "files.pythonhosted.org:443", "*.github.io"]',
        'hosts: ["*.GitHub.io", {host: files.pythonhosted.org, ports: [443]}, PyPI.org.]',
    )
    assert diff(parse_policy(OLD), parse_policy(moved)) == []
    assert format_text([], "a.yaml", "b.yaml") == "a.yaml -> b.yaml: no change\n"


def test_text_groups_by_sandbox_and_json_has_every_field() -> None:
    changes = [
        Change("agents", "mode", Kind.CHANGED, "enforce", "report"),
        Change("agents", "hosts", Kind.ADDED, None, "pypi.org (443)"),
        Change("", "retention.max_records", Kind.CHANGED, "1000000", "10"),
    ]
    assert format_text(changes, "a.yaml", "b.yaml") == (
        "a.yaml -> b.yaml: 3 changes\nsandbox agents:\n  ~ mode: enforce -> report\n  + hosts: pypi.org (443)\n"
        "policy:\n  ~ retention.max_records: 1000000 -> 10\n"
    )
    document = json.loads(json.dumps(as_json(changes, "a.yaml", "b.yaml")))
    assert document["old"] == "a.yaml" and document["new"] == "b.yaml"
    assert document["changes"][1] == {
        "sandbox": "agents", "field": "hosts", "change": "added", "old": None, "new": "pypi.org (443)"
    }  # fmt: skip


def test_on_apply_is_a_change_of_the_policy() -> None:
    changes = diff(parse_policy(OLD), parse_policy(OLD + "on_apply: close_forbidden\n"))
    assert changes == [Change("", "on_apply", Kind.CHANGED, "keep", "close_forbidden")]
