"""`egress.gateway.dropcount` when the drop logger lags: a count is added once, by the log or by the counter, never
both, whatever the lag (red team 5's burst: a packet recorded three and four times).

Every test drives the interleaving of counter reads, log judgements and how far the log has caught up with an
injected clock (the times passed to `DropCounts`); `egress.nft.runner.drop_counters` reading a key listed twice is
tested here too (the third count of the burst)."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from egress.decide import Enforcement, Reason, Verdict
from egress.decisions import DecidedFlow
from egress.gateway.dropcount import MAX_LAG, CountKey, DropCounts
from egress.nft import libnft, runner

KEY = ("10.0.0.2", 17, "100.64.0.1", False)
VERDICT = Verdict(Enforcement.BLOCK, Reason.FIREWALL_DROP, "default-deny", "udp")


def flow(key: CountKey = KEY) -> DecidedFlow:
    return DecidedFlow(100.0, "agents", key[0], 4000, key[2], 9999, "udp", "", VERDICT)


def synthesize(key: CountKey) -> DecidedFlow:
    return DecidedFlow(100.0, "agents", key[0], 0, key[2], 0, "udp", "", VERDICT)


def test_a_log_judged_several_reads_late_is_not_also_counted() -> None:
    """One datagram counted at t=1; the logger is busy until t=3.5: the reads at 2 and 3 settle nothing, and the
    log, judged at 3.5, is the packet's only count (on main the read at 2 added it, and the log added it again)."""
    counts = DropCounts()
    assert counts.reconcile({KEY: 1}, 2.0, synthesize, wall=200.0, logged_through=0.5, counted_by=1.5) == []
    assert counts.reconcile({}, 3.0, synthesize, wall=201.0, logged_through=0.6, counted_by=2.0) == []
    counts.judged(KEY, flow(), now=3.5)
    assert counts.reconcile({}, 4.0, synthesize, wall=203.0, logged_through=3.9, counted_by=3.0) == []
    assert counts.reconcile({}, 5.0, synthesize, wall=204.0, logged_through=4.9, counted_by=4.0) == []
    assert counts.added == 0 and counts.forced == 0


def test_what_the_log_left_out_is_added_once_the_log_caught_up() -> None:
    counts = DropCounts()
    assert counts.reconcile({KEY: 5000}, 2.0, synthesize, wall=200.0, logged_through=0.0, counted_by=1.0) == []
    assert counts.reconcile({}, 3.0, synthesize, wall=201.0, logged_through=0.5, counted_by=2.0) == []  # behind
    counts.judged(KEY, flow(), now=2.5)
    [extra] = counts.reconcile({}, 4.0, synthesize, wall=202.0, logged_through=3.9, counted_by=3.0)
    assert extra.count == 4999 and extra.dport == 9999  # the logged packet's verdict, judged before the count
    assert counts.reconcile({}, 5.0, synthesize, wall=203.0, logged_through=4.9, counted_by=4.0) == []


def test_a_reading_the_log_has_caught_up_with_is_settled_as_it_comes() -> None:
    """Its sets were retired at 1.0 and the log is drained past that: no need to wait for another read."""
    counts = DropCounts()
    counts.judged(KEY, flow(), now=0.5)
    [extra] = counts.reconcile({KEY: 40}, 9.0, synthesize, wall=200.0, logged_through=1.2, counted_by=1.0)
    assert extra.count == 39


def test_a_log_that_never_catches_up_is_settled_after_max_lag() -> None:
    """Counts are never held back for ever: past `MAX_LAG` the oldest reading is settled anyway (the approximate
    case docs/records.md names)."""
    counts = DropCounts()
    counts.reconcile({KEY: 7}, 1.0, synthesize, wall=200.0, logged_through=0.0)
    assert counts.reconcile({}, 1.0 + MAX_LAG, synthesize, wall=201.0, logged_through=0.0) == []
    [extra] = counts.reconcile({}, 2.0 + MAX_LAG, synthesize, wall=202.0, logged_through=0.0)
    assert extra.count == 7 and counts.forced == 1


class _Kernel:
    """Two generations of counting sets, as `egress.gateway.dropread.CountReader` swaps them: packets count into
    the current one; a read takes the retired one whole (retired at the previous swap) and swaps."""

    def __init__(self) -> None:
        self.current: dict[CountKey, int] = {}
        self.retired: dict[CountKey, int] = {}
        self.swapped = 0.0

    def count(self, key: CountKey) -> None:
        self.current[key] = self.current.get(key, 0) + 1

    def read(self, now: float) -> tuple[dict[CountKey, int], float]:
        reading, counted_by = self.retired, self.swapped
        self.retired, self.current, self.swapped = self.current, {}, now
        return reading, counted_by


@pytest.mark.parametrize("seed", range(40))
def test_every_packet_counts_once_whatever_the_interleaving(seed: int) -> None:
    """Random bursts over a few keys, a log that lags by a random number of reads and drops some packets (log
    limits, a full socket), reads that come late (seconds to minutes apart: nothing expires unread): once the log
    caught up, the logged packets and the added counts sum to what the kernel counted, per key."""
    rng = random.Random(seed)
    keys = [("10.0.0.2", 17, f"100.64.0.{n}", False) for n in range(4)]
    sent = dict.fromkeys(keys, 0)
    kernel = _Kernel()
    queued: list[tuple[float, CountKey]] = []  # (counted at, key): logs on their way
    reported = dict.fromkeys(keys, 0)
    counts = DropCounts()
    now = 0.0
    logged_through = -1.0

    def read() -> None:
        reading, counted_by = kernel.read(now)
        for decision in counts.reconcile(
            reading, now, synthesize, wall=now, logged_through=logged_through, counted_by=counted_by
        ):
            reported[next(key for key in keys if key[2] == decision.dst)] += decision.count

    for _ in range(60):
        for _ in range(rng.randrange(0, 30)):  # packets counted, some of them logged
            key = rng.choice(keys)
            now += 0.001
            kernel.count(key)
            sent[key] += 1
            if rng.random() < 0.3:
                queued.append((now, key))
        # A read delayed past the old 120 s timeout loses nothing. The logger's thread reads too: when a read comes
        # late, the log has been drained meanwhile (up to a few seconds before the read); else maybe not.
        delay = rng.choice([1.0, 1.0, 5.0, 150.0])
        now += delay
        if delay > 1.0 or rng.random() < 0.5:  # the logger judges what it read, up to some moment
            upto = now - rng.choice([0.0, 0.5, 1.5, 3.0])
            for _at, key in [item for item in queued if item[0] <= upto]:
                counts.judged(key, flow(key), now)
                reported[key] += 1
            queued = [item for item in queued if item[0] > upto]
            logged_through = max(logged_through, upto)
        read()
    for _at, key in queued:  # the logger catches up
        counts.judged(key, flow(key), now)
        reported[key] += 1
    logged_through = now
    for _ in range(3):
        now += 1.0
        logged_through = now - 0.5
        read()
    assert counts.forced == 0
    assert reported == sent


class _Listing:
    """`libnft` stand-in: a set listing that names one element twice."""

    def run(self, command: str, flags: int) -> str:
        body = {"val": {"concat": ["10.0.0.2", 17, "100.64.0.1"]}, "counter": {"packets": 1}}
        element: dict[str, Any] = {"elem": body}
        return json.dumps({"nftables": [{"set": {"elem": [element, element]}}]})


def test_a_key_listed_twice_is_one_counter(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dump of a set that changes while it is read may list an element twice: summed, one datagram read as two,
    then as a counter restart at the next read (one more), the burst's third and fourth counts."""
    monkeypatch.setattr(libnft, "load", _Listing)
    assert runner.drop_counters("egress", ["drops4a"]) == {("10.0.0.2", 17, "100.64.0.1"): 1}
