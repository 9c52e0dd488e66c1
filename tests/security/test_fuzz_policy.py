"""Fuzzing the policy loader (egress/policy/loader.py): whatever YAML it is given, it returns a `Policy` or raises
its own `RulesError`, whose every problem names the file and a line inside it (never a traceback from PyYAML or
from a checker that met a type it did not expect).

Inputs: the lab's and the example policy with a random node replaced by a random value (structure-aware), the
same files mutated as text (YAML punctuation, tags, anchors and aliases inserted, lines cut), and random YAML
documents. tests/policy/test_loader.py has one fixture per failure mode.
"""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.budget import examples
from tests.security.fuzz_targets import check_policy_text as check
from tests.security.fuzzing import counted

pytestmark = [pytest.mark.fuzz, pytest.mark.usefixtures("fuzz_rows")]

ROOT = pathlib.Path(__file__).resolve().parents[2]
SEEDS = [(ROOT / "rules" / name).read_text() for name in ("lab-policy.yaml", "policy.example.yaml")]

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(1 << 70), 1 << 70)
    | st.floats(allow_nan=True)
    | st.text(max_size=30)
    | st.sampled_from(["10.0.0.0/8", "::/0", "*.lab", "allowed.lab:443", "enforce", "block", "0", "65536", "tcp"])
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def _replace(tree: Any, path: list[int], value: object) -> Any:
    """``tree`` with the node chosen by ``path`` (indices into each level's children) replaced by ``value``."""
    if not path or not isinstance(tree, dict | list) or not tree:
        return value
    keys = list(tree) if isinstance(tree, dict) else list(range(len(tree)))
    key = keys[path[0] % len(keys)]
    copy = dict(tree) if isinstance(tree, dict) else list(tree)
    copy[key] = _replace(tree[key], path[1:], value)
    return copy


@settings(max_examples=examples(400), deadline=None)
@given(st.sampled_from(SEEDS), st.lists(st.integers(0, 50), max_size=6), values)
@counted("policy loader (structure-aware)")
def test_a_policy_with_any_node_replaced_loads_or_says_where(seed: str, path: list[int], value: object) -> None:
    tree = _replace(yaml.safe_load(seed), path, value)
    check(yaml.safe_dump(tree, allow_unicode=True))


_YAML_BITS = ["{", "}", "[", "]", ":", ": ", "- ", ",", "&a ", "*a", "!!str ", "!!python/name:os.system ", "\t", "'"]
_YAML_BITS += ['"', "#", "\n", "\n  ", "? ", "|", ">", "%YAML 1.1\n", "---\n", "<<: *a\n", "\x00", "\ufeff"]


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        match draw(st.sampled_from(("insert", "delete", "cut"))):
            case "insert":
                text = text[:at] + draw(st.sampled_from(_YAML_BITS) | st.text(max_size=5)) + text[at:]
            case "delete":
                text = text[:at] + text[at + draw(st.integers(1, 20)) :]
            case _:
                text = text[:at]
    return text


@settings(max_examples=examples(600), deadline=None)
@given(mutated())
@counted("policy loader (mutated text)")
def test_a_mutated_policy_file_loads_or_says_where(text: str) -> None:
    check(text)


@settings(max_examples=examples(200), deadline=None)
@given(values)
@counted("policy loader (random YAML)")
def test_random_yaml_loads_or_says_where(tree: object) -> None:
    check(yaml.safe_dump(tree))
    check(yaml.safe_dump({"version": 1, "sandboxes": tree}))
