"""Fixtures of the security suite (see tests/security/harness.py for how to write a technique test).

- ``lab_factory``: module-scoped; ``lab_factory(policy=None, workers=2)`` opens a lab of the module's own (the
  gateway running under ``policy``, a path, e.g. ``POLICIES / "dns.yaml"``), torn down at the end of the module.
  Calls with the same arguments return the same lab. A SIGTERM or SIGHUP to pytest meanwhile stops it as Ctrl-C
  does, the labs torn down first (tests/security/interrupt.py).
- ``security_lab``: module-scoped; the module's lab under rules/lab-policy.yaml.
- ``fuzz_rows``: reports the fuzz rows a property counted (tests/security/fuzzing.py) when the test ends.

A failed test's report has a section per open lab with its gateway log's warnings and errors (`harness.troubles`):
the log itself is removed with the lab.

The table, the ``security`` and ``fuzz`` markers and ``--security-report`` come from tests/security/report.py,
a plugin registered by tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Callable, Generator, Iterator

import pytest

from tests.security.fuzzing import COUNTS, flush
from tests.security.harness import OPEN_LABS, SecurityLab, open_lab, troubles
from tests.security.interrupt import terminated_as_interrupt

LabFactory = Callable[..., SecurityLab]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report: pytest.TestReport = yield
    if report.failed:
        for lab in OPEN_LABS:
            report.sections.append((f"gateway log of lab {lab.lab.prefix}: warnings and errors", troubles(lab)))
    return report


@pytest.fixture(scope="module")
def lab_factory() -> Iterator[LabFactory]:
    opened: dict[tuple[pathlib.Path | None, int, tuple[str, ...]], SecurityLab] = {}
    # A SIGTERM or SIGHUP while a lab is open tears it down before pytest stops (tests/security/interrupt.py).
    with terminated_as_interrupt(), contextlib.ExitStack() as stack:

        def factory(
            policy: pathlib.Path | None = None, workers: int = 2, extra_args: tuple[str, ...] = ()
        ) -> SecurityLab:
            key = (policy, workers, extra_args)
            if key not in opened:
                opened[key] = stack.enter_context(open_lab(policy, workers, extra_args))
            return opened[key]

        yield factory


@pytest.fixture(scope="module")
def security_lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory()


@pytest.fixture
def fuzz_rows() -> Iterator[None]:
    """Reports the fuzz rows the test counted (tests/security/fuzzing.py `counted`) when it ends."""
    COUNTS.clear()  # nothing counted before this test is this test's
    try:
        yield
    finally:
        flush()
