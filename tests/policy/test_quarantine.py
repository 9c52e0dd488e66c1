"""The ``quarantine:`` block (egress.policy.quarantine through the loader): accepted with its defaults, every
problem refused at file:line:field, the webhook URL checked."""

from __future__ import annotations

import pytest

from egress.policy.loader import parse_policy
from egress.policy.model import Quarantine
from egress.policy.quarantine import webhook_problem
from egress.policy.yamlnodes import RulesError

HEAD = "version: 1\nsandboxes:\n  agent:\n    sources: [10.0.0.0/24]\n"


def test_a_quarantine_with_its_defaults() -> None:
    policy = parse_policy(HEAD + "    quarantine: {after: 3, within: 600}\n", "p.yaml")
    assert policy.sandboxes[0].quarantine == Quarantine(3, 600, frozenset({"mining", "tunnel"}), "", 5)
    assert parse_policy(HEAD, "p.yaml").sandboxes[0].quarantine is None


def test_every_field() -> None:
    text = HEAD + (
        "    quarantine:\n      after: 1\n      within: 60\n      categories: [crypto-node]\n"
        "      webhook: https://hooks.example.com:8443/egress?token=abc\n"
    )
    rule = parse_policy(text, "p.yaml").sandboxes[0].quarantine
    assert rule is not None
    assert (rule.after, rule.within, rule.categories) == (1, 60, frozenset({"crypto-node"}))
    assert rule.webhook == "https://hooks.example.com:8443/egress?token=abc"


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("{within: 60}", "p.yaml:5: sandboxes.agent.quarantine.after: required, missing"),
        ("{after: 0, within: 60}", "p.yaml:5: sandboxes.agent.quarantine.after: 0 is not in 1-10000"),
        ("{after: 3, within: 0}", "p.yaml:5: sandboxes.agent.quarantine.within: 0 is not seconds (1-604800)"),
        ("{after: 3, within: 60, categories: []}", "quarantine.categories: empty"),
        ("{after: 3, within: 60, categories: [policy]}", "quarantine.categories[0]: 'policy' is not one of"),
        ("{after: 3, within: 60, later: 1}", "quarantine.later: unknown key"),
        ("{after: 3, within: 60, webhook: 'ftp://h/x'}", "quarantine.webhook: must be an http:// or https:// URL"),
        ("[3, 60]", "sandboxes.agent.quarantine: must be a mapping"),
    ],
)
def test_refused(block: str, message: str) -> None:
    with pytest.raises(RulesError) as error:
        parse_policy(HEAD + f"    quarantine: {block}\n", "p.yaml")
    assert message in str(error.value), str(error.value)


def test_a_password_in_the_webhook_is_not_echoed() -> None:
    with pytest.raises(RulesError) as error:
        parse_policy(HEAD + "    quarantine: {after: 3, within: 60, webhook: 'https://u:secret@h/x'}\n", "p.yaml")
    assert "user or password" in str(error.value) and "secret" not in str(error.value)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:8080/hook", None),
        ("https://hooks.example.com/x", None),
        ("http:///nohost", "names no host"),
        ("http://h/x y", "printable ASCII"),
        ("http://h/\u00e9", "printable ASCII"),
        ("http://h:99999/", "not a URL"),
        ("http://h:0/", "port 0"),
        ("http://h/x#frag", "fragment"),
        ("javascript:alert(1)", "http:// or https://"),
        ("http://h/" + "a" * 3000, "longer than"),
    ],
)
def test_webhook_urls(url: str, problem: str | None) -> None:
    found = webhook_problem(url)
    assert (found is None) if problem is None else (found is not None and problem in found), found
