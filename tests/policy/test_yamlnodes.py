"""Tests for egress.policy.yamlnodes: typed reads that report instead of raising, with the node's line."""

from __future__ import annotations

import pathlib

import pytest
import yaml

from egress.policy import yamlnodes
from egress.policy.yamlnodes import NodeChecker, Problem, RulesError, compose, decode, kind, line, quote, read_text


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


def test_merge_keys_bring_in_what_the_mapping_does_not_set() -> None:
    checker, fields, problems = read(
        "a: &base {x: 1, y: 2, <<: {z: 3, x: 9}}\nb: &other {w: 4}\nc:\n  <<: [*base, *other]\n  y: 5\n"
    )
    assert problems == []
    merged = {
        key: checker.integer(value, key) for key, value in checker.mapping(fields["c"], "c", frozenset("wxyz")).items()
    }
    assert merged == {"y": 5, "x": 1, "z": 3, "w": 4}  # own keys win, then earlier merges, then nested ones


@pytest.mark.parametrize("value", ["1", "[1, 2]", "[{x: 1}, 2]"])
def test_a_merge_key_that_is_not_a_mapping_is_its_own_problem(value: str) -> None:
    checker, fields, problems = read(f"a:\n  <<: {value}\n  x: 1\n")
    assert checker.mapping(fields["a"], "a", frozenset("x")) != {}
    assert [str(p) for p in problems] == [
        "f.yaml:2: a: '<<' (YAML merge key) must name an anchored mapping (not a mapping or a list of them)"
    ]


def test_merged_unknown_keys_are_reported_at_their_line() -> None:
    checker, fields, problems = read("a: &base\n  x: 1\n  bad: 2\nb:\n  <<: *base\n")
    checker.mapping(fields["b"], "b", frozenset("x"))
    assert [str(p) for p in problems] == ["f.yaml:3: unknown key 'bad' in b (allowed: x)"]


def test_quote_cuts_long_values_and_says_their_length() -> None:
    assert quote("pypi.org") == "'pypi.org'"
    assert quote("a" * 81) == repr("a" * 80) + "... (81 characters)"
    assert len(quote("x" * 50_000_000)) < 110


def test_decode_refuses_big_files_and_names_the_line_of_a_bad_byte(tmp_path: pathlib.Path) -> None:
    assert decode(b"a: 1\n", "f.yaml") == "a: 1\n"
    with pytest.raises(RulesError) as caught:
        decode(b"version: 1\nsandboxes:\n  a\xe9b: {}\n", "f.yaml")
    assert str(caught.value) == "f.yaml:3: not UTF-8: byte 0xe9 at column 4 (invalid continuation byte)"
    with pytest.raises(RulesError, match=r"f.yaml:1: file too large: 11 bytes, over the limit of 10"):
        decode(b"x" * 11, "f.yaml", max_bytes=10)
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * 100)
    with pytest.raises(RulesError, match="file too large: 102 bytes, over the limit of 100"):
        read_text(big, max_bytes=100)
    assert read_text(big, max_bytes=102).startswith("# x")
    with pytest.raises(RulesError, match="cannot read"):
        read_text(tmp_path / "missing.yaml")


def _tags(node: yaml.Node) -> list[tuple[str, str, int]]:
    """Every node's tag, value (scalars) and line, depth first."""
    if isinstance(node, yaml.ScalarNode):
        return [(node.tag, str(node.value), node.start_mark.line)]
    children = node.value if isinstance(node, yaml.SequenceNode) else [item for pair in node.value for item in pair]
    return [(node.tag, "", node.start_mark.line)] + [tag for child in children for tag in _tags(child)]


@pytest.mark.parametrize(
    "path", sorted((pathlib.Path(__file__).resolve().parents[2] / "rules").glob("*.yaml")), ids=lambda path: path.name
)
def test_the_fast_resolver_tags_every_node_as_pyyaml_does(path: pathlib.Path) -> None:
    extra = "\nx-more: [yes, No, ~, null, 0x1F, 1_000, 3.5e2, .inf, 2001-12-14, '<<', =, h.example, -1, +2, '', \"\"]\n"
    text = path.read_text() + extra
    mine = yamlnodes.compose(text, str(path), [])
    assert mine is not None
    theirs = yaml.compose(text, Loader=yaml.SafeLoader)
    assert theirs is not None
    assert _tags(mine) == _tags(theirs)
