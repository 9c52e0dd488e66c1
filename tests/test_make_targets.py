"""The Makefile's test selections: every marker a ``-m`` expression names is registered, and `make test`'s three
parts (the unit tests on every core, the other lab tests one by one, the security suite's modules side by side)
together select every test exactly once, whatever markers it carries."""

from __future__ import annotations

import itertools
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


def _expressions(text: str = MAKEFILE) -> list[str]:
    return [found.replace(UNIT, _unit_tests()) for found in re.findall(r'-m "([^"]+)"', text)]


def _selects(expression: str, markers: set[str]) -> bool:
    """Whether pytest's ``-m expression`` selects a test carrying ``markers`` (names, and/or/not, parentheses)."""
    names = set(re.findall(r"[A-Za-z_][\w-]*", expression)) - {"and", "or", "not"}
    python = re.sub(
        r"[A-Za-z_][\w-]*",
        lambda m: m.group(0) if m.group(0) in {"and", "or", "not"} else repr(m.group(0) in markers),
        expression,
    )
    assert names, expression
    return bool(eval(python, {"__builtins__": {}}))


def test_the_evaluator_reads_selections_as_pytest_does() -> None:
    assert _selects("not root and not e2e", set())
    assert not _selects("not root and not e2e", {"root"})
    assert _selects("not (not root and not e2e) and security", {"root", "e2e", "security"})
    assert not _selects("not (not root and not e2e) and security", {"security"})
    assert _selects("security or fuzz", {"fuzz"})


def test_every_marker_a_selection_names_is_registered() -> None:
    expressions = _expressions()
    assert len(expressions) >= 5, expressions  # unit, the three parts of test, security, pcaps
    for expression in expressions:
        names = set(re.findall(r"[A-Za-z_][\w-]*", expression)) - {"and", "or", "not"}
        assert names, expression
        assert names <= _registered(), f"{expression!r} names unregistered markers {names - _registered()}"


def test_make_test_runs_every_test_in_exactly_one_part() -> None:
    recipe = MAKEFILE.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    parts = _expressions(recipe)
    assert len(parts) == 3, parts
    assert parts[0] == _unit_tests()
    registered = sorted(_registered())
    for count in range(len(registered) + 1):
        for carried in itertools.combinations(registered, count):
            chosen = [part for part in parts if _selects(part, set(carried))]
            assert len(chosen) == 1, f"a test marked {carried} is run by {chosen}"
    # the unit part on every core; the other lab tests one after the other; the security modules side by side,
    # a module on one worker (its lab takes seconds to build)
    lines = [line for line in recipe.splitlines() if "-m " in line or "pytest" in line]
    assert any('-n auto -m "$(UNIT_TESTS)"' in line for line in lines), lines
    serial = next(line for line in lines if '-m "not ($(UNIT_TESTS)) and not security"' in line)
    assert " -n " not in serial
    assert "--dist loadfile" in recipe.split('and not security"', 1)[1]
    unit = MAKEFILE.split("\nunit:", 1)[1].split("\n\n", 1)[0]
    # `make unit` is the first part of `make test` without the coverage-guided fuzz runs, at a tenth of the budgets
    assert f'-m "{UNIT} and not fuzz"' in unit
    # in plain pytest processes, each collecting part of the modules (tests/test_run_halves.py tests the runner)
    assert "-m tests.run_halves" in unit and " -n " not in unit
