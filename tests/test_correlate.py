"""Correlation of attempts with actions: the span with slack, nearest first, running actions, the timeline."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress.correlate import Correlator, correlate, distance, timeline
from egress.record.actions import ActionRecord
from tests.record import record

T = 1_700_000_000.0


def _action(name: str, start: float, end: float | None) -> ActionRecord:
    return ActionRecord("agents", name, "shell_command", f"run {name}", T + start, None if end is None else T + end)


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (5.0, [("a", 0.0)]),  # inside
        (0.0, [("a", 0.0)]),  # on the start
        (10.0, [("a", 0.0)]),  # on the end
        (-2.0, [("a", 2.0)]),  # just inside the slack before
        (12.0, [("a", 2.0)]),  # just inside the slack after
        (-2.5, []),
        (12.5, []),
    ],
)
def test_span_with_slack(at: float, expected: list[tuple[str, float]]) -> None:
    found = correlate(T + at, [_action("a", 0, 10)], slack=2.0)
    assert [(action.id, round(gap, 6)) for action, gap in found] == expected


def test_containment_wins_over_the_slack_innermost_first() -> None:
    outer = _action("outer", 0, 100)
    inner = _action("inner", 40, 50)
    before = _action("before", 20, 39)
    after = _action("after", 51, 60)
    found = correlate(T + 45, [outer, before, after, inner], slack=10)
    assert [(a.id, round(d, 6)) for a, d in found] == [("inner", 0.0), ("outer", 0.0)]


def test_overlapping_actions_both_contain_the_later_started_first() -> None:
    first = _action("first", 0, 10)
    second = _action("second", 5, 15)
    assert [a.id for a, _ in correlate(T + 7, [first, second], slack=2)] == ["second", "first"]
    assert [a.id for a, _ in correlate(T + 3, [first, second], slack=2)] == ["first"]
    assert [a.id for a, _ in correlate(T + 12, [first, second], slack=2)] == ["second"]


def test_nested_actions_with_the_same_start_the_shorter_is_innermost() -> None:
    long = _action("long", 0, 100)
    short = _action("short", 0, 10)
    assert [a.id for a, _ in correlate(T + 5, [long, short], slack=2)] == ["short", "long"]


def test_back_to_back_actions_an_attempt_inside_one_is_not_linked_to_the_other() -> None:
    """The case that failed on fast machines: two actions a few ms apart, each attempt belongs to its own."""
    download = _action("download", 0, 0.004)
    stratum = _action("stratum", 0.005, 0.050)
    assert [a.id for a, _ in correlate(T + 0.010, [download, stratum], slack=2)] == ["stratum"]
    assert [a.id for a, _ in correlate(T + 0.002, [download, stratum], slack=2)] == ["download"]


def test_adjacent_actions_sharing_an_edge_both_contain_it() -> None:
    first = _action("first", 0, 10)
    second = _action("second", 10, 20)
    assert [a.id for a, _ in correlate(T + 10, [first, second], slack=2)] == ["second", "first"]


def test_outside_every_span_only_the_nearest_within_the_slack() -> None:
    first = _action("first", 0, 10)
    second = _action("second", 13, 20)
    assert [(a.id, round(d, 6)) for a, d in correlate(T + 11, [first, second], slack=5)] == [("first", 1.0)]
    assert [(a.id, round(d, 6)) for a, d in correlate(T + 12, [first, second], slack=5)] == [("second", 1.0)]
    # equally near: both, the later one first
    assert [a.id for a, _ in correlate(T + 11.5, [first, second], slack=5)] == ["second", "first"]
    assert correlate(T + 30, [first, second], slack=5) == []


def test_a_running_action_contains_everything_after_its_start() -> None:
    finished = _action("finished", 0, 10)
    running = _action("running", 5, None)
    assert [a.id for a, _ in correlate(T + 8, [finished, running], slack=2)] == ["running", "finished"]
    assert [a.id for a, _ in correlate(T + 11, [finished, running], slack=2)] == ["running"]
    assert [a.id for a, _ in correlate(T + 1e6, [finished, running], slack=2)] == ["running"]
    assert [(a.id, d) for a, d in correlate(T + 4, [running], slack=2)] == [("running", 1.0)]


def test_a_running_action_spans_to_infinity_and_zero_slack_is_exact() -> None:
    running = _action("running", 0, None)
    assert correlate(T + 1e6, [running], slack=0) == [(running, 0.0)]
    assert correlate(T - 0.001, [running], slack=0) == []
    assert distance(T + 5, _action("x", 0, 2)) == pytest.approx(3)


def test_bad_slack() -> None:
    with pytest.raises(ValueError, match="slack"):
        correlate(T, [], slack=-1)


def test_timeline_interleaves_actions_before_attempts_at_equal_times() -> None:
    first = _action("first", 0, 10)
    second = _action("second", 20, None)
    early = record(ts=T - 100)
    during = record(ts=T + 5)
    tie = record(ts=T + 20)
    items = timeline([second, first], [tie, during, early])
    kinds = [(item.kind, item.action.id if item.action else item.attempt.id) for item in items]  # type: ignore[union-attr]
    assert kinds == [
        ("attempt", early.id),
        ("action", "first"),
        ("attempt", during.id),
        ("action", "second"),
        ("attempt", tie.id),
    ]
    assert [item.related for item in items if item.kind == "attempt"] == [(), ("first",), ("second",)]
    assert [item.ts for item in items] == sorted(item.ts for item in items)


times = st.floats(min_value=0, max_value=1000, allow_nan=False)


@given(
    spans=st.lists(st.tuples(times, st.one_of(st.none(), st.floats(0, 300))), max_size=30),
    attempts=st.lists(times, max_size=20),
    slack=st.floats(0, 20),
)
def test_the_indexed_correlator_agrees_with_the_plain_rule(
    spans: list[tuple[float, float | None]], attempts: list[float], slack: float
) -> None:
    actions = [_action(f"a{i}", start, None if length is None else start + length) for i, (start, length) in
               enumerate(spans)]  # fmt: skip
    random.Random(1).shuffle(actions)
    index = Correlator(actions, slack)
    for at in attempts:
        assert index.links(T + at) == correlate(T + at, actions, slack)
