"""One part of the test modules, for tests/run_halves.py (`make unit`, three parts; the names say "half" from when
there were two): which modules this pytest process collects, and, on request, the CPU each module cost (the
runner balances the parts by it).

``--half I --half-plan PLAN``: PLAN is a JSON object mapping a test module's path (relative to the rootdir, e.g.
``tests/api/test_app.py``) to the part (0, 1, ...) that runs it. This process collects only the modules of part I;
a module the plan does not name belongs to part 0. So the parts are complements by construction: a module the
plan forgot still runs, once, and a module is never imported by both (no double collection).

``--cpu-per-module PATH`` writes, at the end, a JSON object: each module's CPU seconds (user + system, this process
and the children it reaped), its import and collection plus its tests' setup, call and teardown. Registered from
tests/conftest.py (``pytest_plugins``).
"""

from __future__ import annotations

import json
import pathlib
import resource
from collections import defaultdict
from collections.abc import Generator

import pytest

_PLAN = "egress_half_plan"
_CPU = "egress_cpu_per_module"


def is_test_module(path: pathlib.Path) -> bool:
    """What pytest's default ``python_files`` (``test_*.py``, ``*_test.py``) collects."""
    return path.suffix == ".py" and (path.name.startswith("test_") or path.name.endswith("_test.py"))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("egress halves (tests/run_halves.py)")
    group.addoption("--half", type=int, default=None, help="collect only the test modules of this part (0, 1, ...)")
    group.addoption("--half-plan", default=None, help="JSON: test module path -> part (unnamed modules: part 0)")
    group.addoption("--cpu-per-module", default=None, help="write each test module's CPU seconds (JSON) here")


def pytest_configure(config: pytest.Config) -> None:
    half, plan = config.getoption("--half"), config.getoption("--half-plan")
    if (half is None) != (plan is None):
        raise pytest.UsageError("--half and --half-plan go together")
    if plan is not None:
        assigned: dict[str, int] = json.loads(pathlib.Path(plan).read_text())
        setattr(config, _PLAN, (half, assigned))
    if config.getoption("--cpu-per-module"):
        setattr(config, _CPU, defaultdict(float))


def pytest_ignore_collect(collection_path: pathlib.Path, config: pytest.Config) -> bool | None:
    if (chosen := getattr(config, _PLAN, None)) is None or not is_test_module(collection_path):
        return None  # pytest's own rules decide
    half, assigned = chosen
    return assigned.get(_name(config, collection_path), 0) != half or None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A module named on the command line is collected without `pytest_ignore_collect` being asked: its tests are
    dropped here when they belong to the other half (which runs them), not reported as deselected twice."""
    if (chosen := getattr(config, _PLAN, None)) is None:
        return
    half, assigned = chosen
    items[:] = [item for item in items if assigned.get(_name(config, item.path), 0) == half]


def _name(config: pytest.Config, path: pathlib.Path) -> str:
    return path.relative_to(config.rootpath).as_posix()


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _add(config: pytest.Config, path: pathlib.Path, seconds: float) -> None:
    if (spent := getattr(config, _CPU, None)) is not None and is_test_module(path):
        spent[_name(config, path)] += seconds


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, object, object]:
    before = _cpu()
    try:
        return (yield)
    finally:
        _add(collector.config, collector.path, _cpu() - before)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    before = _cpu()
    try:
        return (yield)
    finally:
        _add(item.config, item.path, _cpu() - before)


def pytest_unconfigure(config: pytest.Config) -> None:
    if (spent := getattr(config, _CPU, None)) is not None:
        rounded = {name: round(seconds, 3) for name, seconds in sorted(spent.items())}
        pathlib.Path(config.getoption("--cpu-per-module")).write_text(json.dumps(rounded, indent=1) + "\n")
