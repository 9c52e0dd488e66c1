"""tests/run_halves.py and tests/halves.py (`make unit`): every module in exactly one part, the parts balanced, one
summary and the right exit status."""

from __future__ import annotations

import pathlib
from types import SimpleNamespace
from typing import Any

import pytest

from tests import halves, run_halves


def test_every_module_is_in_exactly_one_half_and_the_halves_are_balanced() -> None:
    expected = {f"tests/test_{index}.py": float(index % 7 + 1) for index in range(40)}
    for parts in (2, run_halves.PROCESSES):
        assigned = run_halves.plan(expected, parts)
        assert assigned.keys() == expected.keys() and set(assigned.values()) == set(range(parts))
        totals = [sum(expected[name] for name in assigned if assigned[name] == part) for part in range(parts)]
        assert max(totals) - min(totals) <= max(expected.values())
        assert run_halves.plan(dict(reversed(expected.items())), parts) == assigned  # the same plan in every process


def test_a_module_not_measured_counts_its_tests_at_the_measured_average(tmp_path: pathlib.Path) -> None:
    (tmp_path / "tests" / "sub").mkdir(parents=True)
    (tmp_path / "tests" / "test_old.py").write_text("def test_a():\n    pass\ndef test_b():\n    pass\n")
    (tmp_path / "tests" / "sub" / "test_new.py").write_text("def test_c():\n    pass\n\nasync def test_d(): ...\n" * 3)
    (tmp_path / "tests" / "helper.py").write_text("def test_not_collected_here():\n    pass\n")
    (tmp_path / "tests" / ".hidden").mkdir()
    (tmp_path / "tests" / ".hidden" / "test_x.py").write_text("")
    modules = run_halves.module_paths(tmp_path)
    assert modules == ["tests/sub/test_new.py", "tests/test_old.py"]
    assert run_halves.weights(modules, {"tests/test_old.py": 3.0}, tmp_path) == {
        "tests/sub/test_new.py": 6 * 1.5,
        "tests/test_old.py": 3.0,
    }


def _config(tmp_path: pathlib.Path, half: int, assigned: dict[str, int]) -> Any:
    return SimpleNamespace(rootpath=tmp_path, egress_half_plan=(half, assigned))


def test_a_half_collects_its_modules_and_half_0_those_the_plan_forgot(tmp_path: pathlib.Path) -> None:
    plan = {"tests/test_a.py": 1}
    ignored = {
        (half, name): halves.pytest_ignore_collect(tmp_path / name, _config(tmp_path, half, plan))
        for half in (0, 1)
        for name in ("tests/test_a.py", "tests/test_forgotten.py", "tests/conftest.py", "tests/api")
    }
    assert {key for key, value in ignored.items() if value} == {(0, "tests/test_a.py"), (1, "tests/test_forgotten.py")}
    assert set(ignored.values()) == {True, None}  # None: pytest's own rules decide the rest


@pytest.mark.parametrize(
    ("statuses", "combined"),
    [([0, 0], 0), ([1, 0], 1), ([0, 1], 1), ([2, 1], 2), ([5, 0], 0), ([0, 5], 0), ([5, 5], 5), ([5, 1], 1)],
)
def test_the_exit_status_fails_if_either_half_failed(statuses: list[int], combined: int) -> None:
    assert run_halves.combined_status(statuses) == combined


def test_the_summary_adds_up_both_halves() -> None:
    first = run_halves.Finished(
        0, 1, 1.0, 2.0, "x\n\x1b[31m1 failed\x1b[0m, \x1b[32m10 passed\x1b[0m, 1 warning in 2s\n"
    )
    second = run_halves.Finished(1, 0, 1.5, 2.5, "10 passed, 2 skipped, 3 deselected, 2 warnings in 2.1s (0:00:02)\n")
    said = run_halves.summary([first, second])
    assert said.startswith("all 2 parts: 1 failed, 20 passed, 2 skipped, 3 deselected, 3 warnings (part 1: 2.0 s")


def test_a_failure_in_one_half_fails_the_run_and_both_halves_run(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real runner on a checkout of three modules, one failing: three pytest processes (`PROCESSES`), one
    module each (also when the modules are named on the command line)."""
    assert run_halves.PROCESSES == 3
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_fails.py").write_text("def test_fails():\n    assert 1 == 2\n")
    (tmp_path / "tests" / "test_passes.py").write_text("def test_passes():\n    pass\n\ndef test_too():\n    pass\n")
    (tmp_path / "tests" / "test_also.py").write_text("def test_also():\n    pass\n")
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # hypothesis's and others': ~1 s of CPU a process
    named = ["tests/test_fails.py", "tests/test_passes.py", "tests/test_also.py"]  # named: no pytest_ignore_collect
    assert run_halves.run(["-q", "-p", "no:cacheprovider", *named], root=tmp_path) == 1
    out = capsys.readouterr().out
    assert out.count("===== part ") == 3 and all(f"part {n} of 3: 1 modules" in out for n in (1, 2, 3))
    assert "all 3 parts: 1 failed, 3 passed (part 1" in out
