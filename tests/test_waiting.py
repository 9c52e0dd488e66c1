"""tests/waiting.py, on a fake clock: `eventually` returns once a check passes, re-raises the check's last failure
when time is up, and stretches its timeout by ``EGRESS_TEST_TIME_FACTOR``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from tests import waiting
from tests.waiting import TIME_FACTOR_ENV, eventually, eventually_async, scaled, time_factor


class FakeClock:
    """`time.monotonic` and `time.sleep` that only move when slept on."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(waiting, "_monotonic", fake.monotonic)
    monkeypatch.setattr(waiting, "_sleep", fake.sleep)
    monkeypatch.delenv(TIME_FACTOR_ENV, raising=False)
    return fake


def _passes_on(attempt: int) -> tuple[list[int], Callable[[], str]]:
    calls: list[int] = []

    def check() -> str:
        calls.append(len(calls) + 1)
        assert len(calls) >= attempt, f"attempt {len(calls)} is too early"
        return "done"

    return calls, check


def test_returns_what_the_check_returns_once_it_passes(clock: FakeClock) -> None:
    calls, check = _passes_on(3)
    assert eventually(check, timeout=10, interval=0.5) == "done"
    assert calls == [1, 2, 3]
    assert clock.slept == [0.5, 0.5]


def test_a_check_that_passes_at_once_never_sleeps(clock: FakeClock) -> None:
    assert eventually(lambda: 42, timeout=0) == 42
    assert clock.slept == []


def test_a_falsy_result_is_not_yet(clock: FakeClock) -> None:
    answers: Iterator[object] = iter([None, 0, [], "yes"])
    assert eventually(lambda: next(answers), timeout=10) == "yes"
    with pytest.raises(AssertionError, match=r"returned \[\]"):
        eventually(lambda: [], timeout=1, interval=0.25)


def test_fails_with_the_last_assertion_after_the_timeout(clock: FakeClock) -> None:
    seen = []

    def check() -> None:
        seen.append(clock.now)
        raise AssertionError(f"still failing at {clock.now:g}")

    with pytest.raises(AssertionError, match=r"not true after 2 s .*: still failing at 1002") as failure:
        eventually(check, timeout=2, interval=0.5)
    assert seen == [1000, 1000.5, 1001, 1001.5, 1002]
    assert isinstance(failure.value.__cause__, AssertionError)  # the check's own error, for the traceback


def test_other_exceptions_are_not_retried(clock: FakeClock) -> None:
    calls = []

    def check() -> None:
        calls.append(1)
        raise KeyError("a bug, not a wait")

    with pytest.raises(KeyError):
        eventually(check, timeout=10)
    assert calls == [1]


def test_the_timeout_scales_with_the_environment(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TIME_FACTOR_ENV, "5")
    assert time_factor() == 5.0
    assert scaled(2) == 10.0

    def never() -> None:
        raise AssertionError("no")

    with pytest.raises(AssertionError, match=rf"not true after 10 s .*{TIME_FACTOR_ENV}=5"):
        eventually(never, timeout=2, interval=1)
    assert clock.now == 1010
    monkeypatch.setenv(TIME_FACTOR_ENV, "0.5")
    clock.now = 0
    with pytest.raises(AssertionError):
        eventually(never, timeout=2, interval=1)
    assert clock.now == 1


@pytest.mark.parametrize("text", ["fast", "0", "-2", "nan", "inf"])
def test_a_bad_factor_is_an_error(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv(TIME_FACTOR_ENV, text)
    with pytest.raises(ValueError, match=TIME_FACTOR_ENV):
        time_factor()


def test_an_unset_or_empty_factor_is_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TIME_FACTOR_ENV, raising=False)
    assert time_factor() == 1.0
    monkeypatch.setenv(TIME_FACTOR_ENV, " ")
    assert scaled(3) == 3.0


def test_the_async_variant_waits_on_the_loop(clock: FakeClock) -> None:
    calls = []

    async def check() -> str:
        calls.append(1)
        assert len(calls) >= 3
        return "ok"

    assert asyncio.run(eventually_async(check, timeout=10, interval=0)) == "ok"
    assert len(calls) == 3
    clock.now = 0.0

    async def advance_then_fail() -> None:
        clock.now += 1
        raise AssertionError("never")

    with pytest.raises(AssertionError, match="never"):
        asyncio.run(eventually_async(advance_then_fail, timeout=3, interval=0))
    assert clock.now == 3  # three attempts, the last at the deadline
