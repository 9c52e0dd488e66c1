"""`egress.policy.partition`: every sandbox in exactly one resolver process, never moved by other sandboxes."""

from __future__ import annotations

import pytest

from egress.policy.model import Policy
from egress.policy.partition import MAX_PROCESSES, partition, process_of
from tests.nft import make_sandbox

NAMES = [f"sandbox-{i}" for i in range(200)]


@pytest.mark.parametrize("processes", [1, 2, 3, MAX_PROCESSES])
def test_every_sandbox_is_in_exactly_one_process(processes: int) -> None:
    policy = Policy(1, tuple(make_sandbox(name, f"10.{i // 250}.{i % 250}.0/24") for i, name in enumerate(NAMES)))
    parts = partition(policy, processes)
    assert len(parts) == processes
    assert sorted(name for part in parts for name in part) == sorted(NAMES)
    for index, part in enumerate(parts):
        assert all(process_of(name, processes) == index for name in part)
        assert list(part) == [name for name in NAMES if name in part]  # the policy's order


def test_one_process_takes_every_sandbox() -> None:
    assert {process_of(name, 1) for name in NAMES} == {0}


def test_other_sandboxes_coming_and_going_never_move_one() -> None:
    """A reload that adds, removes or reorders sandboxes keeps each remaining sandbox in its process: a move would
    split its tunnel tracker between two processes."""
    before = {name: process_of(name, 2) for name in NAMES}
    policy = Policy(1, tuple(make_sandbox(name, f"10.{i}.0.0/24") for i, name in enumerate(reversed(NAMES[::3]))))
    after = {name for part in partition(policy, 2) for name in part}
    for index, part in enumerate(partition(policy, 2)):
        assert all(before[name] == index for name in part)
    assert after == set(NAMES[::3])


def test_both_processes_get_sandboxes() -> None:
    """Not a balance guarantee (a hash), but 200 names are not all in one process."""
    counts = [sum(process_of(name, 2) == index for name in NAMES) for index in range(2)]
    assert min(counts) > 50


@pytest.mark.parametrize("processes", [0, -1, MAX_PROCESSES + 1])
def test_a_count_out_of_range_is_refused(processes: int) -> None:
    with pytest.raises(ValueError):
        process_of("agents", processes)
