"""Supervision (egress.gateway.watch.Watcher) with scripted components, a played clock and a sleep that only moves
it: a failure locks down, the component is restarted with backoff, the policy table comes back once nothing is
down, and repeated failure gives up with the lockdown in force."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from egress.gateway.liveness import RestartPolicy
from egress.gateway.watch import Watcher


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


class Part:
    """A component whose checks answer from a script (``None``: alive); restarts can be made to fail."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.problems: list[str | None] = []
        self.restarts = 0
        self.restart_fails = 0

    async def check(self) -> str | None:
        return self.problems.pop(0) if self.problems else None

    async def restart(self) -> None:
        self.restarts += 1
        if self.restart_fails:
            self.restart_fails -= 1
            raise OSError("port taken")


class Gateway:
    def __init__(self) -> None:
        self.events: list[str] = []
        self.given_up: str | None = None

    def lock(self, why: str) -> None:
        self.events.append(f"lock: {why}")

    async def unlock(self) -> None:
        self.events.append("unlock")

    def give_up(self, why: str) -> None:
        self.given_up = why
        self.events.append("give up")


def _watch(parts: list[Part], policy: RestartPolicy | None = None) -> tuple[Watcher, Gateway, Clock]:
    gateway, clock = Gateway(), Clock()
    watcher = Watcher(parts, gateway.lock, gateway.unlock, gateway.give_up, policy, clock, clock.sleep)
    return watcher, gateway, clock


def _run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))


async def _settle(watcher: Watcher) -> None:
    """Let every recovery under way finish (the played sleep only yields)."""
    for _ in range(200):
        if not watcher._tasks:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"recoveries still under way: {watcher.down}")


def test_a_dead_component_locks_down_is_restarted_and_the_policy_table_comes_back() -> None:
    worker, resolver = Part("proxy-0"), Part("resolver")
    watcher, gateway, clock = _watch([worker, resolver])

    async def scenario() -> None:
        await watcher.check_once()
        assert gateway.events == []
        worker.problems = ["pid 7 exited with -9"]
        await watcher.check_once()
        assert gateway.events == ["lock: proxy-0: pid 7 exited with -9"]
        await _settle(watcher)
        assert worker.restarts == 1 and resolver.restarts == 0
        assert clock.slept == [0.5]  # the first restart after the first backoff step
        assert gateway.events[-1] == "unlock"
        assert watcher.recovered == [("proxy-0", 0.5)]

    _run(scenario)


def test_the_lockdown_holds_until_every_component_is_back() -> None:
    worker, resolver = Part("proxy-0"), Part("resolver")
    worker.restart_fails = 2  # its port is still taken twice: backoff 0.5, 1, then 2 s
    watcher, gateway, clock = _watch([worker, resolver])

    async def scenario() -> None:
        worker.problems = ["exited"]
        resolver.problems = ["no answer to a probe query for 11 s"]
        await watcher.check_once()
        await _settle(watcher)
        assert gateway.events.count("unlock") == 1 and gateway.events[-1] == "unlock"
        assert sum(event.startswith("lock") for event in gateway.events) == 1  # one lockdown for both
        assert worker.restarts == 3 and resolver.restarts == 1
        assert sorted(clock.slept) == [0.5, 0.5, 1.0, 2.0]
        assert [name for name, _ in watcher.recovered] == ["resolver", "proxy-0"]

    _run(scenario)


def test_a_restart_that_does_not_bring_it_back_counts_as_another_failure() -> None:
    resolver = Part("resolver")
    watcher, gateway, _ = _watch([resolver])

    async def scenario() -> None:
        resolver.problems = ["hung", "still hung after the restart", None]
        await watcher.check_once()
        await _settle(watcher)
        assert resolver.restarts == 2
        assert gateway.events[-1] == "unlock"

    _run(scenario)


def test_repeated_failure_gives_up_and_leaves_the_lockdown() -> None:
    worker = Part("proxy-1")
    worker.restart_fails = 100
    watcher, gateway, clock = _watch([worker], RestartPolicy(max_failures=5, window=300))

    async def scenario() -> None:
        worker.problems = ["exited"]
        await watcher.check_once()
        await _settle(watcher)
        assert gateway.given_up is not None
        assert "proxy-1 failed 5 times within 300 s" in gateway.given_up
        assert "unlock" not in gateway.events  # the lockdown stays
        assert worker.restarts == 4 and clock.slept == [0.5, 1.0, 2.0, 4.0]

    _run(scenario)


def test_a_component_that_reports_its_own_death_is_recovered_once() -> None:
    drops = Part("drop logger")
    watcher, gateway, _ = _watch([drops])

    async def scenario() -> None:
        watcher.notice("drop logger", "drop logger died: socket closed")
        watcher.notice("drop logger", "drop logger died: again")  # already being recovered
        await _settle(watcher)
        assert drops.restarts == 1
        assert gateway.events == ["lock: drop logger: drop logger died: socket closed", "unlock"]

    _run(scenario)


def test_a_component_being_recovered_is_not_checked() -> None:
    worker = Part("proxy-0")
    watcher, _, _ = _watch([worker])

    async def scenario() -> None:
        watcher.down["proxy-0"] = 0.0
        worker.problems = ["would fail"]
        await watcher.check_once()
        assert worker.problems == ["would fail"]  # not asked

    _run(scenario)


def test_stopping_the_watcher_cancels_recoveries_under_way() -> None:
    worker = Part("proxy-0")
    gateway = Gateway()
    never = asyncio.Event()

    async def slow_sleep(seconds: float) -> None:
        await never.wait()

    async def scenario() -> None:
        watcher = Watcher([worker], gateway.lock, gateway.unlock, gateway.give_up, sleep=slow_sleep)
        worker.problems = ["exited"]
        running = asyncio.create_task(watcher.run())
        for _ in range(10):
            await asyncio.sleep(0)
        assert watcher.down and watcher._tasks
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await asyncio.sleep(0)
        assert not watcher._tasks and worker.restarts == 0

    _run(scenario)


def test_each_round_of_checks_feeds_the_watchdog_and_a_stalled_loop_does_not() -> None:
    """systemd's watchdog keep-alive comes from the supervision loop itself (the supervisor passes
    `Notifier.watchdog` as ``beat``): one beat per round, none while a round is stuck."""
    beats: list[int] = []
    stuck = asyncio.Event()
    part = Part("proxy-0")
    gateway = Gateway()

    async def play(seconds: float) -> None:
        if len(beats) >= 3:
            await stuck.wait()  # the loop stalls here: no further beat may come
        await asyncio.sleep(0)

    async def scenario() -> None:
        watcher = Watcher(
            [part], gateway.lock, gateway.unlock, gateway.give_up, sleep=play, beat=lambda: beats.append(1)
        )
        running = asyncio.create_task(watcher.run())
        for _ in range(50):
            await asyncio.sleep(0)
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)

    _run(scenario)
    assert len(beats) == 3
