"""Red team 5: a burst of 50,000 blocked attempts, each recorded exactly once.

The agent sends one UDP datagram to each of 50,000 addresses (100.64.0.0/16, port 9999; no rule allows any) in
about two seconds. nftables drops them all; its log is rate-limited, so most are reported by the drop logger from
the kernel's per-key counters (`egress.gateway.dropcount`: what the log left out, one read late). docs/records.md
promises exact counts ("a flood of 5,000 packets is one record ... with count 5,000"): every destination must have
its record, and the counts must add up to the datagrams sent, no more.

Found 2026-11-30 (three runs, load 5-6): every destination is recorded, but 641, 784 and 319 of them with a count
of 3 or 4 for their one datagram (sums 51,282, 51,631 and 50,638 for 50,000): a logged packet's record, a count
added for the same packet by a counter read, and a third count later. A record that says three attempts were made
where one was is a wrong record (goal (c)): the counts an operator reads (records, stats) are inflated.

2026-12-01: a clean-clone CI run (load 15-22) failed with 139 of the 50,000 destinations unrecorded after a fixed
180 s. Late, not lost (three runs under load, docs/records.md): every destination's decision reached the recorder
and Redis, in bursts of a few thousand a second separated by pauses while the drop logger lists the kernel's
50,000 counters (a read is settled by the next one); the last record came 19 s after the burst at load 4, 107 s at
load 11, 147 s at load 20-23 and 203 s at load 24-28 (after a pause of 71 s without any). So the test waits as long
as the counts change and fails only when they stop short (`STALLED`).
"""

from __future__ import annotations

import collections
import json
import sys
import time
from collections.abc import Callable

import pytest

from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, RECORD_WAIT, SecurityLab, report
from tests.waiting import eventually, scaled

pytestmark = pytest.mark.security

BURST = 50_000
"""Datagrams, one to each address of 100.64.0.0/16 from the first."""
PREFIX = "100.64."
STALLED = 8 * RECORD_WAIT
"""Seconds (scaled) without any change in the counts after which what is missing is taken as lost, not late: the
longest pause measured in a working pipeline was 71 s at load 24-28 (two reads of the kernel's 50,000 counters, a
read being settled by the next, each read taking about a minute at that load), and one run at load 27 paused 132 s
(then judged stalled; not known to be a loss); a read may also wait up to `dropcount.MAX_LAG`, 30 s, for the log."""
CEILING = 20 * RECORD_WAIT
"""Seconds (scaled) each wait may take while the counts still change: only a bound against a wait without end
(the counts change at about 1,000 destinations a second under load; 50,000 take under a minute unloaded)."""
SENDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent = 0
for i in range(int(sys.argv[1])):
    while True:
        try:
            s.sendto(b"x" * 32, (f"100.64.{i >> 8}.{i & 255}", 9999))
            break
        except BlockingIOError:
            pass
    sent += 1
print("sent", sent)
"""


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "redteam.yaml")


COUNTS = """
import json, sys, time
import redis
client = redis.Redis.from_url(sys.argv[1], decode_responses=True)
days = range(int(float(sys.argv[2]) // 86400), int(time.time() // 86400) + 1)
found = {}
for day in days:
    for dst, count in client.hgetall(f"egress:{{agent}}:destinations:86400:{day}").items():
        if dst.startswith(sys.argv[3]):
            found[dst] = found.get(dst, 0) + int(count)
print(json.dumps(found))
"""
"""Attempts per destination as Redis counts them (docs/records.md, "Counters": each record's ``count`` added at
write time, in the same step that stores it): the sandbox's day hashes since the burst began. Reading 50,000
records through ``egress events`` takes minutes on a loaded machine; these hashes hold the same counts."""


def _counts(lab: SecurityLab, since: float) -> dict[str, int]:
    """Attempts recorded per destination of the burst."""
    done = lab.gateway([sys.executable, "-c", COUNTS, lab.run.redis_url, str(since), PREFIX], timeout=60)
    assert done.returncode == 0, done.stderr
    return {str(dst): int(count) for dst, count in json.loads(done.stdout).items()}


class Stalled(Exception):
    """What was read stopped changing short of done: the rest is lost, not late (not an `AssertionError`, so
    `eventually` does not retry it)."""


class Progress:
    """A check for `eventually` that passes when ``done`` holds for what ``read`` returns, keeps waiting while that
    changes, and raises `Stalled` once it has not changed for ``stalled`` seconds (scaled) short of done.
    ``clock``: monotonic seconds (tests inject theirs)."""

    def __init__(
        self,
        read: Callable[[], dict[str, int]],
        done: Callable[[dict[str, int]], str | None],
        stalled: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.read = read
        self.done = done
        """What is still missing (``None``: nothing)."""
        self.stalled = stalled
        self.clock = clock
        self.last: tuple[int, int] | None = None
        self.changed = clock()
        self.seen: list[tuple[int, int]] = []
        """(destinations, total) at each change: the progress, for the failure's message."""

    def __call__(self) -> dict[str, int]:
        counts = self.read()
        now, state = self.clock(), (len(counts), sum(counts.values()))
        if state != self.last:
            self.last, self.changed = state, now
            self.seen.append(state)
        missing = self.done(counts)
        if missing is None:
            return counts
        if now - self.changed >= scaled(self.stalled):
            raise Stalled(f"{missing}; no change for {now - self.changed:.0f} s; progress {self.seen[-8:]}")
        raise AssertionError(missing)


@pytest.mark.timeout(scaled(2 * CEILING + 4 * RECORD_WAIT))
def test_a_burst_of_blocked_datagrams_is_counted_exactly(lab: SecurityLab) -> None:
    since = time.time()
    done = lab.sandbox_python(SENDER, str(BURST), timeout=120)
    assert f"sent {BURST}" in done.stdout, done.stdout + done.stderr

    def every_destination(counts: dict[str, int]) -> str | None:
        return None if len(counts) == BURST else f"{BURST - len(counts)} destinations without a record yet"

    def settled(counts: dict[str, int]) -> str | None:  # count updates still on their way come a second late
        return None if totals[-2:] == [sum(counts.values())] * 2 else f"counts still changing: {totals[-3:]}"

    totals: list[int] = []
    try:
        counts = eventually(Progress(lambda: _counts(lab, since), every_destination, STALLED), CEILING, interval=5.0)
    except Stalled as stalled:
        report("redteam/burst-50k-udp", "recording", 0, True, "firewall-drop", str(stalled)[:140])
        raise

    def read() -> dict[str, int]:
        found = _counts(lab, since)
        totals.append(sum(found.values()))
        return found

    counts = eventually(Progress(read, settled, STALLED), CEILING, interval=5.0)
    total = totals[-1]
    over = collections.Counter(count for count in counts.values() if count != 1)
    note = f"{len(counts)} destinations recorded, counts sum {total} for {BURST} datagrams; other counts {dict(over)}"
    wrong = len(counts) != BURST or total != BURST or bool(over)  # goal (c): a missing or a wrong record
    report("redteam/burst-50k-udp", "recording", 0, wrong, "firewall-drop" if counts else None, note)
    assert len(counts) == BURST, note
    assert total == BURST and not over, note


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _reads(*sizes: int) -> Callable[[], dict[str, int]]:
    """A reader returning ``sizes[i]`` destinations (count 1 each) at its i-th call, the last one from then on."""
    calls = iter(sizes)
    last = [0]

    def read() -> dict[str, int]:
        last[0] = next(calls, last[0])
        return {f"d{i}": 1 for i in range(last[0])}

    return read


def _three(counts: dict[str, int]) -> str | None:
    return None if len(counts) == 3 else f"{3 - len(counts)} missing"


def test_the_wait_goes_on_while_the_counts_grow() -> None:
    clock = _Clock()
    check = Progress(_reads(0, 1, 2, 3), _three, stalled=10.0, clock=clock)
    for _ in range(3):
        with pytest.raises(AssertionError, match="missing"):
            check()
        clock.now += scaled(9.0)  # less than the stall each time, 27 s in all: still waiting
    assert len(check()) == 3


def test_the_wait_fails_once_the_counts_stop_short() -> None:
    clock = _Clock()
    check = Progress(_reads(1, 2), _three, stalled=10.0, clock=clock)
    for missing in ("2 missing", "1 missing", "1 missing"):
        with pytest.raises(AssertionError, match=missing):
            check()
        clock.now += scaled(6.0)  # the last change was the second read's: 12 s without one by the fourth
    with pytest.raises(Stalled, match=r"1 missing; no change for \d+ s; progress \[\(1, 1\), \(2, 2\)\]"):
        check()
