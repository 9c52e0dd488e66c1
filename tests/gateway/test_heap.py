"""egress.gateway.heap: no collection while a policy is built, and what was built kept out of every later one."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from egress.gateway import heap


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    enabled = gc.isenabled()
    yield
    gc.unfreeze()  # this test process's objects back in the generations they came from
    gc.enable() if enabled else gc.disable()


class _Built:
    """Stands for a rule: an object the collector tracks."""


def _tracked(thing: object) -> bool:
    """In some generation the collector walks (frozen objects are in none)."""
    return any(other is thing for other in gc.get_objects())


def test_the_collector_is_off_while_building_and_on_after_with_the_result_frozen() -> None:
    gc.enable()
    with heap.building():
        assert not gc.isenabled()
        built = _Built()
        assert _tracked(built)
    assert gc.isenabled()
    assert gc.is_tracked(built) and not _tracked(built)  # tracked, but in the permanent generation
    assert gc.get_freeze_count() > 0


def test_a_collector_that_was_off_stays_off() -> None:
    gc.disable()
    with heap.building():
        pass
    assert not gc.isenabled()


def test_overlapping_sections_keep_it_off_until_the_last_ends() -> None:
    gc.enable()
    inner_started, outer_may_end, inner_may_end = threading.Event(), threading.Event(), threading.Event()
    seen: list[bool] = []

    def inner() -> None:
        with heap.building():
            inner_started.set()
            inner_may_end.wait(60)
            seen.append(gc.isenabled())

    thread = threading.Thread(target=inner)
    with heap.building():
        thread.start()
        assert inner_started.wait(60)
        outer_may_end.set()
    assert not gc.isenabled()  # the other thread is still building
    inner_may_end.set()
    thread.join(60)
    assert seen == [False]
    assert gc.isenabled()


def test_an_error_while_building_turns_the_collector_back_on() -> None:
    gc.enable()
    with pytest.raises(ValueError), heap.building():
        raise ValueError("a policy that does not validate")
    assert gc.isenabled()
