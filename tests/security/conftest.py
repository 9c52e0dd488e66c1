"""Fixtures of the security suite (see tests/security/harness.py for how to write a technique test).

- ``lab_factory``: module-scoped; ``lab_factory(policy=None, workers=2)`` opens a lab of the module's own (the
  gateway running under ``policy``, a path, e.g. ``POLICIES / "dns.yaml"``), torn down at the end of the module.
  Calls with the same arguments return the same lab. A SIGTERM or SIGHUP to pytest meanwhile stops it as Ctrl-C
  does, the labs torn down first (tests/security/interrupt.py).
- ``security_lab``: module-scoped; the module's lab under rules/lab-policy.yaml.
- ``fuzz_rows``: reports the fuzz rows a property counted (tests/security/fuzzing.py) when the test ends.

The table, the ``security`` and ``fuzz`` markers and ``--security-report`` come from tests/security/report.py,
a plugin registered by tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Callable, Iterator

import pytest

from tests.security.fuzzing import COUNTS, flush
from tests.security.harness import SecurityLab, open_lab
from tests.security.interrupt import terminated_as_interrupt

LabFactory = Callable[..., SecurityLab]


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
