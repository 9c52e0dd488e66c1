"""The allow-set writer's refresh rule: an element is written again only when its deadline would move."""

from __future__ import annotations

from egress.gateway.allowsets import REFRESH, Refreshes


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_element_is_written_again_only_when_its_deadline_would_move_by_more_than_refresh() -> None:
    clock = Clock()
    refreshes = Refreshes(clock)
    assert refreshes.needed("a4", {"198.51.100.1": 60}) == [("198.51.100.1", 60)]
    refreshes.written("a4", [("198.51.100.1", 60)])
    clock.now += REFRESH / 2
    assert refreshes.needed("a4", {"198.51.100.1": 60}) == []
    assert refreshes.needed("a4", {"198.51.100.1": 30}) == []  # a shorter timeout never shortens the element
    assert refreshes.needed("b4", {"198.51.100.1": 60}) == [("198.51.100.1", 60)]  # another sandbox's set
    clock.now += REFRESH
    assert refreshes.needed("a4", {"198.51.100.1": 60, "198.51.100.2": 30}) == [
        ("198.51.100.1", 60),
        ("198.51.100.2", 30),
    ]


def test_after_the_sets_are_replaced_everything_is_written_again() -> None:
    refreshes = Refreshes(Clock())
    refreshes.written("a4", [("198.51.100.1", 60)])
    refreshes.forget()
    assert refreshes.needed("a4", {"198.51.100.1": 60}) == [("198.51.100.1", 60)]
