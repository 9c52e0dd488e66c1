"""Tests for egress.policy.suffixes: wildcards over suffixes where anyone can create names are warned about."""

from __future__ import annotations

import pathlib

import pytest

from egress.policy.loader import parse_policy
from egress.policy.suffixes import load_suffixes, open_suffixes, policy_warnings

ROOT = pathlib.Path(__file__).resolve().parents[2]
SUFFIXES = load_suffixes(ROOT / "rules" / "psl" / "public-suffix-private.dat")


def test_the_vendored_list_is_the_private_section_with_its_date() -> None:
    text = (ROOT / "rules" / "psl" / "public-suffix-private.dat").read_text(encoding="utf-8")
    assert "snapshot 2026-10-22" in text and "===BEGIN PRIVATE DOMAINS===" in text
    assert "===BEGIN ICANN DOMAINS===" not in text
    assert {"github.io", "blogspot.com", "*.compute.amazonaws.com", "xn--gnstigbestellen-zvb.de"} <= SUFFIXES
    assert "com" not in SUFFIXES and not any(suffix.startswith("!") for suffix in SUFFIXES)


@pytest.mark.parametrize(
    ("domain", "warned"),
    [
        ("github.io", True),  # the suffix itself
        ("amazonaws.com", True),  # suffixes below it
        ("x.compute.amazonaws.com", True),  # *.compute.amazonaws.com: every label below is a suffix
        ("foo.github.io", False),  # one site's own names: only its owner creates them
        ("example.com", False),
        ("a.b.x.compute.amazonaws.com", False),
    ],
)
def test_open_suffixes(domain: str, warned: bool) -> None:
    assert bool(open_suffixes(domain, SUFFIXES)) is warned


def test_policy_warnings_name_the_rule_and_its_line() -> None:
    policy = parse_policy(
        "version: 1\nsandboxes:\n  agents:\n    sources: [10.0.0.0/24]\n    allow:\n      hosts:\n"
        '        - "*.github.io"\n        - github.io\n        - "*.example.com"\n'
        '        - {host: "*.herokuapp.com", answers: [192.0.2.0/24]}\n',
        "p.yaml",
    )
    warnings = policy_warnings(policy, SUFFIXES)
    assert [(warning.line, warning.message.split(":")[0]) for warning in warnings] == [
        (7, "sandboxes.agents.allow.hosts[0]"),
        (10, "sandboxes.agents.allow.hosts[3]"),  # pinning answers limits addresses, not who creates names
    ]
    assert "github.io" in str(warnings[0]) and str(warnings[0]).startswith("p.yaml:7: ")
