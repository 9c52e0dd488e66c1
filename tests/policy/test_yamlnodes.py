"""Tests for egress.policy.yamlnodes: typed reads that report instead of raising, with the node's line."""

from __future__ import annotations

import pytest
import yaml

from egress.policy.yamlnodes import NodeChecker, Problem, RulesError, compose, kind, line


def read(text: str) -> tuple[NodeChecker, dict[str, yaml.Node], list[Problem]]:
    problems: list[Problem] = []
    root = compose(text, "f.yaml", problems)
    assert root is not None
    checker = NodeChecker("f.yaml", problems)
    fields = checker.mapping(root, "the file", frozenset({"a", "b", "c", "d"}))
    return checker, fields, problems


def test_reads_and_problems_carry_lines() -> None:
    checker, fields, problems = read("a: text\nb: 0x10\nc: [1, 2]\nd: {x: 1}\ne: 1\na: again\n")
    assert [str(p) for p in problems] == [
        "f.yaml:5: unknown key 'e' in the file (allowed: a, b, c, d)",
        "f.yaml:6: duplicate key 'a' in the file",
    ]
    assert checker.text(fields["a"], "a") == "text"
    assert checker.integer(fields["b"], "b") == 16
    assert len(checker.sequence(fields["c"], "c")) == 2
    assert checker.integer(fields["a"], "a") is None
    assert checker.text(fields["c"], "c") is None
    assert [str(p) for p in problems[2:]] == ["f.yaml:1: a must be an integer", "f.yaml:3: c must be a string"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", "an integer"), ("true", "a boolean"), ("1.5", "a number"), ("~", "empty (null)"), ("x", "a string"),
     ("[1]", "a list"), ("{a: 1}", "a mapping")],
)  # fmt: skip
def test_kind(text: str, expected: str) -> None:
    node = compose(f"k: {text}\n", "f", [])
    assert node is not None
    assert kind(node.value[0][1]) == expected


def test_syntax_error_is_a_problem() -> None:
    problems: list[Problem] = []
    assert compose("a: [1\n", "f.yaml", problems) is None
    assert problems[0].line == 2 and problems[0].message.startswith("not valid YAML")
    assert line(None) == 1
    assert "f.yaml:2: not valid YAML" in str(RulesError(problems))
