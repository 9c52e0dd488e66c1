"""Policy validation in a child process (egress.gateway.validate): the same version as in-process, every problem
with its file and line, and a child that dies fails the validation instead of passing anything."""

from __future__ import annotations

import os
import pickle
import signal
from pathlib import Path

import pytest

from egress.gateway import validate
from egress.gateway.reload import PolicyVersion, ValidationFailed, load_version, parse_version
from egress.policy.yamlnodes import Problem, RulesError

POLICY = Path(__file__).resolve().parents[2] / "rules" / "lab-policy.yaml"


def _dies(path: str) -> PolicyVersion:
    """A parse whose process is killed (as the kernel's OOM killer would)."""
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("not reached")


def _indexed(version: PolicyVersion) -> bool:
    return all(sandbox._index is not None for sandbox in version.policy.sandboxes)


def test_a_file_validated_in_a_child_is_the_version_validated_here() -> None:
    here = load_version(POLICY)
    there = validate.load(POLICY)
    assert there.digest == here.digest
    assert there.policy == here.policy
    assert _indexed(there)


def test_a_text_validated_in_a_child_is_the_version_validated_here() -> None:
    text = POLICY.read_text()
    there, cpu = validate.parse(text, "fleet version 3")
    here = parse_version(text, "fleet version 3")
    assert (there.digest, there.policy) == (here.digest, here.policy)
    assert _indexed(there)
    assert cpu > 0


def test_every_problem_comes_back_from_the_child_with_its_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(POLICY.read_text().replace("version: 1", "version: 1\nsurprise: true", 1) + "\nalso: 2\n")
    with pytest.raises(RulesError) as here:
        load_version(bad)
    with pytest.raises(RulesError) as there:
        validate.load(bad)
    assert there.value.problems == here.value.problems
    assert len(there.value.problems) >= 2
    assert all(problem.file == str(bad) and problem.line > 1 for problem in there.value.problems)


def test_a_child_that_dies_fails_the_validation() -> None:
    with pytest.raises(ValidationFailed, match="died"):
        validate.in_child(_dies, str(POLICY))
    assert validate.load(POLICY).digest == load_version(POLICY).digest  # and the next one works


def test_a_rules_error_pickles_with_its_problems() -> None:
    error = RulesError([Problem("a.yaml", 3, "unknown key"), Problem("a.yaml", 9, "bad port")])
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, RulesError)
    assert copy.problems == error.problems
    assert str(copy) == str(error)
