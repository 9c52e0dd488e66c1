"""The per-sandbox budget of TCP queries per loop turn: turns run by hand (the injected schedule is the clock)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from egress.dnsserver.fair import FairShare


class Turns:
    """The schedule: holds the turn asked for until the test runs it."""

    def __init__(self) -> None:
        self.due: list[Callable[[], None]] = []

    def __call__(self, callback: Callable[[], None]) -> None:
        self.due.append(callback)

    def run(self) -> None:
        due, self.due = self.due, []
        for callback in due:
            callback()


def _in_loop(check: Callable[[], None]) -> None:
    async def scenario() -> None:
        check()

    asyncio.run(scenario())


def test_a_sandbox_within_its_budget_goes_on_and_past_it_waits_for_a_turn() -> None:
    def check() -> None:
        turns = Turns()
        share = FairShare(3, turns)
        assert [share.take("agent") for _ in range(3)] == [None, None, None]
        assert len(turns.due) == 1  # one turn asked for, however many were taken
        waiters = [share.take("agent") for _ in range(5)]
        assert all(w is not None and not w.done() for w in waiters)
        assert share.waited == 5
        turns.run()
        assert [w.done() for w in waiters if w is not None] == [True, True, True, False, False]
        turns.run()
        assert all(w is not None and w.done() for w in waiters)
        assert share.waiting("agent") == 0

    _in_loop(check)


def test_another_sandbox_is_not_held_by_one_that_spent_its_budget() -> None:
    def check() -> None:
        turns = Turns()
        share = FairShare(2, turns)
        for _ in range(2):
            share.take("agent")
        held = [share.take("agent") for _ in range(100)]
        assert share.take("builder") is None
        assert share.take("builder") is None
        assert share.take("builder") is not None  # its own budget, not the agent's
        turns.run()
        assert sum(1 for w in held if w is not None and w.done()) == 2

    _in_loop(check)


def test_a_newcomer_queues_behind_its_sandboxs_waiting_connections() -> None:
    """First come first served within a sandbox: budget left after a turn does not let a newcomer jump the queue."""

    def check() -> None:
        turns = Turns()
        share = FairShare(2, turns)
        share.take("agent")
        share.take("agent")
        first = share.take("agent")
        second = share.take("agent")
        third = share.take("agent")
        turns.run()  # grants first and second; third still waits
        late = share.take("agent")
        assert late is not None
        turns.run()
        assert first is not None and first.done() and second is not None and second.done()
        assert third is not None and third.done() and late.done()

    _in_loop(check)


def test_a_waiter_whose_connection_ended_is_skipped() -> None:
    def check() -> None:
        turns = Turns()
        share = FairShare(1, turns)
        share.take("agent")
        gone = share.take("agent")
        kept = share.take("agent")
        assert gone is not None and kept is not None
        gone.cancel()
        turns.run()
        assert kept.done() and not kept.cancelled()

    _in_loop(check)


def test_turns_stop_once_nothing_waits_and_the_budgets_are_clear() -> None:
    def check() -> None:
        turns = Turns()
        share = FairShare(4, turns)
        share.take("agent")
        turns.run()  # clears what was spent; nothing waits: no further turn
        assert turns.due == []
        assert share.turns == 1
        assert [share.take("agent") for _ in range(4)] == [None] * 4  # the whole budget again

    _in_loop(check)


def test_the_budget_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        FairShare(0)
