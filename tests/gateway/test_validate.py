"""Policy validation in a child process (egress.gateway.validate): the same version as in-process, every problem
with its file and line, and a child that dies fails the validation instead of passing anything."""

from __future__ import annotations

import asyncio
import gc
import os
import pickle
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from egress.gateway import validate
from egress.gateway.reload import PolicyVersion, ValidationFailed, load_version, parse_version
from egress.policy.model import Policy
from egress.policy.pieces import Pieces
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


def _reports_priority(path: str) -> PolicyVersion:
    """A "parse" that says, as its digest, the CPU priority (nice value) its process runs at."""
    return PolicyVersion(Policy(1, ()), str(os.getpriority(os.PRIO_PROCESS, 0)))


def test_the_child_runs_at_a_lower_cpu_priority_than_the_supervisor() -> None:
    """The supervisor's resolver must win the CPU over seconds of parsing (issue 12)."""
    version, _ = validate.in_child(_reports_priority, str(POLICY))
    here = os.getpriority(os.PRIO_PROCESS, 0)
    assert int(version.digest) == min(19, here + validate.CHILD_NICE)


def test_the_child_hands_back_the_workers_payload_and_the_version_comes_out_frozen() -> None:
    """The supervisor forwards the child's pickle to the workers instead of pickling 100,000 rules itself, and
    the policy it unpickled and indexed is out of every later collection (egress.gateway.heap)."""
    try:
        version = validate.load(POLICY)
        assert pickle.loads(version.payload) == version
        assert gc.isenabled()
        rule = version.policy.sandboxes[0].hosts[0]
        assert gc.is_tracked(rule) and not any(thing is rule for thing in gc.get_objects())
    finally:
        gc.unfreeze()


def test_a_version_pickles_without_its_payload() -> None:
    version = validate.load(POLICY)
    copy = pickle.loads(pickle.dumps(version, pickle.HIGHEST_PROTOCOL))
    assert copy == version and copy.payload == b""
    gc.unfreeze()


def test_given_the_loop_the_policy_is_rebuilt_on_it_piece_by_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervisor's resolver answers between two pieces (egress.policy.pieces); a thread rebuilding the
    policy stalled the loop whenever the kernel preempted it holding the interpreter lock (issue 12)."""
    text = POLICY.read_text()
    steps: list[int] = []
    real = validate.rebuild  # type: ignore[attr-defined]

    def recorded(pieces: Pieces) -> Iterator[Policy | None]:
        for step in real(pieces):
            steps.append(threading.get_ident())
            yield step

    monkeypatch.setattr(validate, "rebuild", recorded)

    async def scenario() -> tuple[PolicyVersion, float]:
        loop = asyncio.get_running_loop()
        return await asyncio.to_thread(validate.parse, text, "fleet version 4", loop)

    try:
        version, _ = asyncio.run(asyncio.wait_for(scenario(), 120))
    finally:
        gc.unfreeze()
    here = parse_version(text, "fleet version 4")
    assert (version.digest, version.policy) == (here.digest, here.policy)
    assert _indexed(version)
    assert len(steps) > 1 and set(steps) == {threading.get_ident()}  # asyncio.run's loop runs in this thread
