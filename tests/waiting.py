"""Waiting in tests without sleeping: `eventually` retries a check until it passes or a deadline passes, and
every timeout scales with ``EGRESS_TEST_TIME_FACTOR`` (a float, default 1; e.g. 5 on a slow or busy machine).

A check is a callable that returns a value when the condition holds and raises `AssertionError` (a plain
``assert``) when it does not yet; a falsy return counts as "not yet" too. The last failure is what a test reports,
so a timed-out wait reads like the assertion that never came true.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import Final

TIME_FACTOR_ENV: Final = "EGRESS_TEST_TIME_FACTOR"

# Looked up at call time, so that the helper's own tests can run it on a fake clock.
_monotonic = time.monotonic
_sleep = time.sleep


def time_factor() -> float:
    """The environment's factor for every test timeout (1 when unset); a value that is not a positive number is an
    error, not silently 1."""
    text = os.environ.get(TIME_FACTOR_ENV, "").strip()
    if not text:
        return 1.0
    try:
        factor = float(text)
    except ValueError:
        raise ValueError(f"{TIME_FACTOR_ENV}={text!r} is not a number") from None
    if not math.isfinite(factor) or factor <= 0:
        raise ValueError(f"{TIME_FACTOR_ENV}={text!r} must be a positive number")
    return factor


def scaled(seconds: float) -> float:
    """``seconds`` times the environment's factor: use it for every timeout a test waits on."""
    return seconds * time_factor()


def _not_yet(result: object) -> AssertionError | None:
    if result:
        return None
    hint = " (a check returns a truthy value when it passes)" if result is None else ""
    return AssertionError(f"the check returned {result!r}{hint}")


class _Deadline:
    """What `eventually` and `eventually_async` share: the scaled deadline, the attempts, the last failure."""

    def __init__(self, timeout: float) -> None:
        self.limit = scaled(timeout)
        self.deadline = _monotonic() + self.limit
        self.attempts = 0

    def settled(self, result: object, failure: AssertionError | None) -> bool:
        """True when the attempt passed; False when another may follow; the timed-out error past the deadline."""
        self.attempts += 1
        last = failure if failure is not None else _not_yet(result)
        if last is None:
            return True
        if _monotonic() >= self.deadline:
            raise _timed_out(last, self.limit, self.attempts)
        return False


def _timed_out(last: AssertionError, timeout: float, attempts: int) -> AssertionError:
    message = f"not true after {timeout:g} s ({attempts} attempts; {TIME_FACTOR_ENV}={time_factor():g})"
    if str(last):
        message += f": {last}"
    error = AssertionError(message)
    error.__cause__ = last
    return error


def eventually[T](check: Callable[[], T], timeout: float = 10.0, interval: float = 0.05) -> T:
    """Call ``check`` until it returns a truthy value (returned) without raising `AssertionError`, for at most
    ``timeout`` seconds times the factor; then raise the last `AssertionError`, saying how long was waited.

    ``check`` runs at least once whatever the timeout. Other exceptions are not caught: they are bugs, not
    "not yet". ``interval`` (not scaled) is the pause between attempts.
    """
    deadline = _Deadline(timeout)
    while True:
        try:
            result, failure = check(), None
        except AssertionError as error:
            result, failure = None, error
        if deadline.settled(result, failure):
            return result  # type: ignore[return-value]  # settled: the check returned, not raised
        _sleep(interval)


async def eventually_async[T](check: Callable[[], Awaitable[T]], timeout: float = 10.0, interval: float = 0.02) -> T:
    """`eventually` for a coroutine check, sleeping on the event loop between attempts."""
    deadline = _Deadline(timeout)
    while True:
        try:
            result, failure = await check(), None
        except AssertionError as error:
            result, failure = None, error
        if deadline.settled(result, failure):
            return result  # type: ignore[return-value]  # settled: the check returned, not raised
        await asyncio.sleep(interval)
