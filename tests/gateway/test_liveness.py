"""The supervisor's liveness bookkeeping (egress.gateway.liveness), on a played clock."""

from __future__ import annotations

import pytest

from egress.gateway.liveness import Answers, Drain, RestartPolicy, Restarts


def test_restarts_back_off_exponentially_up_to_the_cap() -> None:
    restarts = Restarts(RestartPolicy(first_delay=0.5, factor=2, max_delay=3, max_failures=10, window=300))
    assert [restarts.failed(float(t)) for t in range(6)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]


def test_the_fifth_failure_within_five_minutes_gives_up() -> None:
    restarts = Restarts()  # the defaults: 5 in 300 s
    delays = [restarts.failed(t) for t in (0.0, 10.0, 20.0, 30.0)]
    assert all(delay is not None for delay in delays)
    assert restarts.failed(40.0) is None
    assert restarts.recent == 5


def test_failures_older_than_the_window_are_forgotten() -> None:
    restarts = Restarts(RestartPolicy(first_delay=1, factor=2, max_failures=3, window=60))
    assert restarts.failed(0.0) == 1
    assert restarts.failed(30.0) == 2
    assert restarts.failed(61.0) == 2  # the one at 0 s left the window: two in it, not three
    assert restarts.failed(89.0) is None  # 30, 61, 89: three within 60 s


@pytest.mark.parametrize(
    "bad",
    [
        {"first_delay": -1},
        {"factor": 0.5},
        {"first_delay": 10, "max_delay": 5},
        {"max_failures": 0},
        {"window": 0},
    ],
)
def test_a_policy_that_cannot_work_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RestartPolicy(**bad)  # type: ignore[arg-type]


def test_a_component_is_hung_after_its_deadline_of_silence() -> None:
    answers = Answers(0.0, deadline=10, grace=30)
    answers.answered(1.0)
    assert not answers.hung(11.0)
    assert answers.hung(11.5)
    assert answers.silent_for(11.5) == 10.5
    answers.answered(12.0)
    assert not answers.hung(12.0)


def test_a_component_just_started_has_its_grace_before_its_first_answer() -> None:
    answers = Answers(0.0, deadline=10, grace=30)
    assert not answers.hung(29.0)  # still building what it serves
    assert answers.hung(31.0)


def test_a_late_answer_does_not_move_the_clock_back() -> None:
    answers = Answers(0.0, deadline=10)
    answers.answered(5.0)
    answers.answered(3.0)
    assert answers.last == 5.0


def test_a_draining_queue_is_never_stalled() -> None:
    drain = Drain(0.0, deadline=30)
    for t, backlog in enumerate([0, 500, 900, 400, 0, 10, 5, 1000, 999]):
        drain.seen(t * 20.0, backlog)
        assert not drain.stalled(t * 20.0), (t, backlog)


def test_a_queue_that_does_not_fall_for_the_deadline_is_stalled() -> None:
    drain = Drain(0.0, deadline=30)
    drain.seen(0.0, 100)
    drain.seen(20.0, 150)  # more came in, none went out
    assert not drain.stalled(20.0)
    drain.seen(31.0, 150)  # still none went out
    assert drain.stalled(31.0)
    drain.seen(32.0, 149)  # progress
    assert not drain.stalled(32.0)
    drain.seen(40.0, 0)
    assert not drain.stalled(100.0)  # empty: nothing to wait for


def test_a_queue_whose_consumer_keeps_writing_is_not_stalled_even_if_it_falls_behind() -> None:
    drain = Drain(0.0, deadline=30)
    for t in range(10):
        drain.seen(t * 10.0, 100 + t * 50, done=t * 1000)  # a flood: the backlog grows, records are still written
        assert not drain.stalled(t * 10.0)
    drain.seen(200.0, 700, done=9000)  # nothing more written for 110 s
    assert drain.stalled(200.0)
