"""`egress.gateway.dropread`: reading the counting generations, with a fake kernel and an injected clock.

The fake stands in for `egress.nft.runner`'s three calls: which generation the rules count into, listing sets,
and the swap (empty the given generation's sets, count into them). Packets are counted into the current one."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from egress.decide import Enforcement, Reason, Verdict
from egress.decisions import DecidedFlow
from egress.gateway.dropcount import DropCounts
from egress.gateway.dropread import CountReader
from egress.nft import counting, runner

SRC, DST = "10.0.0.2", "100.64.0.1"


class Kernel:
    def __init__(self) -> None:
        self.current = 0
        self.sets: dict[str, dict[tuple[str, int, str], int]] = {}
        self.swaps: list[int] = []
        self.refuse_swap = False

    def count(self, dst: str = DST, passed: bool = False, packets: int = 1) -> None:
        name = counting.set_names(self.current)[passed][0]
        elements = self.sets.setdefault(name, {})
        elements[SRC, 17, dst] = elements.get((SRC, 17, dst), 0) + packets

    def count_generation(self, table: str, netns: str | None = None) -> int | None:
        return self.current

    def drop_counters(
        self, table: str, names: Sequence[str], netns: str | None = None
    ) -> dict[tuple[str, int, str], int]:
        out: dict[tuple[str, int, str], int] = {}
        for name in names:
            out.update(self.sets.get(name, {}))
        return out

    def swap_counts(self, table: str, generation: int, netns: str | None = None) -> None:
        if self.refuse_swap:
            raise runner.NftError("nft -f - failed", "Error: Could not process rule: Device or resource busy")
        for passed in (False, True):
            for name in counting.set_names(generation)[passed]:
                self.sets.pop(name, None)
        self.current = generation
        self.swaps.append(generation)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        self.now += 0.25  # every look at the clock takes a while
        return self.now


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> Kernel:
    fake = Kernel()
    for name in ("count_generation", "drop_counters", "swap_counts"):
        monkeypatch.setattr(runner, name, getattr(fake, name))
    return fake


def test_each_packet_is_in_exactly_one_reading_and_says_by_when_it_was_counted(kernel: Kernel) -> None:
    clock = Clock()
    reader = CountReader("egress", clock=clock)
    kernel.count(packets=3)  # into generation 0, current as rendered
    first = reader.read()  # the retired generation 1: empty; then generation 0 is retired
    assert (first.counts, first.counted_by, kernel.swaps) == ({}, 100.25, [1])
    swapped_at = clock.now
    kernel.count(packets=5)  # into generation 1 now
    second = reader.read()
    assert second.counts == {(SRC, 17, DST, False): 3}
    assert second.counted_by == swapped_at  # retired by our own swap: nothing was counted into it since
    third = reader.read()
    assert third.counts == {(SRC, 17, DST, False): 5}
    assert reader.read().counts == {}


def test_a_read_as_late_as_you_like_loses_nothing(kernel: Kernel) -> None:
    """Nothing in the kernel expires: the 120 s of old would have lost these; a reading days later has them."""
    clock = Clock()
    reader = CountReader("egress", clock=clock)
    reader.read()
    kernel.count(dst="100.64.0.9", packets=7)
    kernel.count(dst="100.64.0.9", passed=True, packets=2)
    clock.now += 3 * 86400
    got = reader.read().counts | reader.read().counts
    assert got == {(SRC, 17, "100.64.0.9", False): 7, (SRC, 17, "100.64.0.9", True): 2}


def test_a_swap_that_fails_empties_nothing_and_the_next_read_finds_the_counts(kernel: Kernel) -> None:
    reader = CountReader("egress", clock=Clock())
    reader.read()
    kernel.count(packets=4)
    assert reader.read().counts == {}  # the 4 are in the generation this read retired
    kernel.refuse_swap = True
    with pytest.raises(runner.NftError):
        reader.read()
    kernel.refuse_swap = False
    kernel.count(packets=1)  # still counted into the same generation: the rules were not swapped
    assert reader.read().counts == {(SRC, 17, DST, False): 4}
    assert reader.read().counts == {(SRC, 17, DST, False): 1}


def test_a_table_replaced_since_our_swap_is_read_as_counted_by_the_start_of_the_read(kernel: Kernel) -> None:
    """A reload renders generation 0 current again: the reader did not retire what it reads now, so it does not
    know when that was, and says the latest moment it can be sure of."""
    clock = Clock()
    reader = CountReader("egress", clock=clock)
    reader.read()  # retires 0, counts into 1
    kernel.current, kernel.sets = 0, {}  # the table replaced
    started = clock.now + 0.25
    assert reader.read().counted_by == started


def test_a_table_replaced_during_the_read_is_not_swapped(kernel: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reload came between the look at the rules and the listing: what was listed may be the new table's
    current generation, which a swap would empty while it still counts. Nothing is reported nor emptied; the next
    read takes it whole."""
    reader = CountReader("egress", clock=Clock())
    reader.read()  # counts into 1 now
    real = kernel.drop_counters

    def reload_first(table: str, names: Sequence[str], netns: str | None = None) -> dict[runner.DropKey, int]:
        kernel.current, kernel.sets = 0, {}  # the table replaced: generation 0 counts again
        kernel.count(packets=6)
        monkeypatch.setattr(runner, "drop_counters", real)
        return real(table, names, netns)

    monkeypatch.setattr(runner, "drop_counters", reload_first)
    with pytest.raises(runner.NftError, match="replaced"):
        reader.read()
    assert kernel.swaps == [1]
    kernel.count(packets=1)
    assert reader.read().counts == {}  # retires 0, with its 7
    assert reader.read().counts == {(SRC, 17, DST, False): 7}


def test_rules_that_name_no_generation_are_an_error(kernel: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "count_generation", lambda table, netns=None: None)
    with pytest.raises(runner.NftError, match="no generation"):
        CountReader("egress", clock=Clock()).read()


def test_readings_late_by_minutes_count_every_packet_once_with_the_log(kernel: Kernel) -> None:
    """The reader and `DropCounts` together: one logged packet and many counted ones, read 150 s late."""
    clock = Clock()
    reader = CountReader("egress", clock=clock)
    counts = DropCounts()
    reading = reader.read()
    counts.reconcile(reading.counts, clock.now, _never, wall=0.0, counted_by=reading.counted_by)
    kernel.count(packets=500)
    counts.judged((SRC, 17, DST, False), _flow(), now=clock.now)
    clock.now += 150.0
    found = []
    for _ in range(2):
        reading = reader.read()
        found += counts.reconcile(
            reading.counts, clock.now, _never, wall=0.0, logged_through=clock.now, counted_by=reading.counted_by
        )
    assert [d.count for d in found] == [499]


def _never(key: object) -> None:
    raise AssertionError("a logged key is not synthesized")


def _flow() -> DecidedFlow:
    verdict = Verdict(Enforcement.BLOCK, Reason.FIREWALL_DROP, "default-deny", "udp")
    return DecidedFlow(1.0, "agents", SRC, 4000, DST, 9999, "udp", "", verdict)


def test_the_generation_is_what_the_marker_set_holds() -> None:
    assert counting.generation_of(["0"]) == 0
    assert counting.generation_of(["1"]) == 1
    assert counting.generation_of(["0", "1"]) is None  # not what a swap leaves
    assert counting.generation_of([]) is None
    assert counting.generation_of(["2"]) is None


def test_a_swap_moves_rules_and_marker_together() -> None:
    script = counting.swap_script("egress", 1)
    assert script.splitlines() == [
        "flush set inet egress drops4b",
        "flush set inet egress drops6b",
        "flush set inet egress passes4b",
        "flush set inet egress passes6b",
        "flush chain inet egress count_drop",
        "add rule inet egress count_drop meta mark set meta mark & 0xbfffffff",
        "add rule inet egress count_drop update @drops4b { ip saddr . meta l4proto . ip daddr }",
        "add rule inet egress count_drop update @drops6b { ip6 saddr . meta l4proto . ip6 daddr }",
        "add rule inet egress count_drop ip saddr . meta l4proto . ip daddr != @drops4b "
        "meta mark set meta mark | 0x40000000",
        "add rule inet egress count_drop ip6 saddr . meta l4proto . ip6 daddr != @drops6b "
        "meta mark set meta mark | 0x40000000",
        "flush chain inet egress count_pass",
        "add rule inet egress count_pass meta mark set meta mark & 0xbfffffff",
        "add rule inet egress count_pass update @passes4b { ip saddr . meta l4proto . ip daddr }",
        "add rule inet egress count_pass update @passes6b { ip6 saddr . meta l4proto . ip6 daddr }",
        "add rule inet egress count_pass ip saddr . meta l4proto . ip daddr != @passes4b "
        "meta mark set meta mark | 0x40000000",
        "add rule inet egress count_pass ip6 saddr . meta l4proto . ip6 daddr != @passes6b "
        "meta mark set meta mark | 0x40000000",
        "flush set inet egress counting",
        "add element inet egress counting { 1 }",
    ]
