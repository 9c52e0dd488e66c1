"""The Makefile's test selections: every marker a ``-m`` expression names is registered, and `make test`'s two
halves (the unit tests on every core, then the rest one by one) together select every test exactly once."""

from __future__ import annotations

import pathlib
import re
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAKEFILE = (ROOT / "Makefile").read_text()
UNIT = "$(UNIT_TESTS)"


def _unit_tests() -> str:
    match = re.search(r"^UNIT_TESTS\s*:=\s*(.+)$", MAKEFILE, re.MULTILINE)
    assert match, "the Makefile declares UNIT_TESTS"
    return match.group(1).strip()


def _registered() -> set[str]:
    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    return {line.split(":", 1)[0].strip() for line in markers}


def _expressions() -> list[str]:
    return [found.replace(UNIT, _unit_tests()) for found in re.findall(r'-m "([^"]+)"', MAKEFILE)]


def test_every_marker_a_selection_names_is_registered() -> None:
    expressions = _expressions()
    assert len(expressions) >= 3, expressions  # unit, the two halves of test, security, pcaps
    for expression in expressions:
        names = set(re.findall(r"[A-Za-z_][\w-]*", expression)) - {"and", "or", "not"}
        assert names, expression
        assert names <= _registered(), f"{expression!r} names unregistered markers {names - _registered()}"


def test_make_test_runs_the_unit_half_and_its_complement() -> None:
    recipe = MAKEFILE.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert f'-n auto -m "{UNIT}"' in recipe
    assert f'-m "not ({UNIT})"' in recipe  # the rest: exactly the tests the first half leaves out
    unit = MAKEFILE.split("\nunit:", 1)[1].split("\n\n", 1)[0]
    # `make unit` is the first half of `make test` without the coverage-guided fuzz runs, at a tenth of the budgets
    assert f'-m "{UNIT} and not fuzz"' in unit
    # in two plain pytest processes, each collecting half of the modules (tests/test_run_halves.py tests the runner)
    assert "-m tests.run_halves" in unit and " -n " not in unit
