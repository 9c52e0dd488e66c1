"""Counting fuzz inputs and crashes into the security table's fuzz rows.

Wrap the body of a hypothesis property with `counted` (under ``@given``) and give the test the ``fuzz_rows``
fixture (tests/security/conftest.py), which reports a row per parser when the test ends, passed or failed::

    @pytest.mark.fuzz
    @settings(max_examples=examples(500), deadline=None)
    @given(st.binary())
    @counted("tls-clienthello")
    def test_x(data: bytes) -> None: ...

A crash is an input on which the parser raised something other than an `AssertionError` (a property that does
not hold is a failure, not a crash; both fail the test). Budgets come from tests/budget.py (`examples`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from tests.security.report import report_fuzz


@dataclass
class Count:
    inputs: int = 0
    crashes: int = 0


COUNTS: dict[str, Count] = {}


def counted[**P, R](parser: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Count each call of the wrapped property as one input to ``parser``, and each unexpected exception a crash."""

    def wrap(test: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(test)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            count = COUNTS.setdefault(parser, Count())
            count.inputs += 1
            try:
                return test(*args, **kwargs)
            except AssertionError:
                raise
            except Exception:
                count.crashes += 1
                raise

        return run

    return wrap


def flush(note: str = "") -> None:
    """Report every parser counted since the last flush as one row each, and start again."""
    for parser, count in sorted(COUNTS.items()):
        report_fuzz(parser, count.inputs, count.crashes, note)
    COUNTS.clear()
