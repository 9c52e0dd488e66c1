"""Supervision: every component checked every `CHECK_EVERY` seconds, a dead or hung one restarted with backoff
while the lockdown holds, the policy table back once all are alive, and giving up loudly on repeated failure.

The `Watcher` knows components only as `Supervised` (a name, ``check``: why it is not alive, ``restart``) and
the gateway only through three callbacks: ``lock`` (the lockdown table replaces the policy table), ``unlock`` (the
policy table again, once nothing is down) and ``give_up`` (the gateway stops, the lockdown in force). The clock
and the sleep are injected: tests play failures and backoff without waiting (tests/gateway/test_watch.py).

`keep_guard_open` is the supervisor's heartbeat to the kernel's guard table (`egress.nft.guard`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Protocol

from egress.gateway.liveness import CHECK_EVERY, RestartPolicy, Restarts

log = logging.getLogger("egress.gateway")

GUARD_LIFE: Final = 5
"""Seconds the guard table lets sandbox traffic pass after the supervisor's last heartbeat."""
GUARD_EVERY: Final = 1.0
"""Seconds between two heartbeats (several per `GUARD_LIFE`: one slow ``nft`` run does not close the gateway)."""


class Supervised(Protocol):
    @property
    def name(self) -> str: ...

    async def check(self) -> str | None:
        """Why the component is not alive now, or ``None``."""

    async def restart(self) -> None:
        """Stop what is left of it and start it again; raise if that failed."""


class Watcher:
    def __init__(
        self,
        components: Sequence[Supervised],
        lock: Callable[[str], None],
        unlock: Callable[[], Awaitable[None]],
        give_up: Callable[[str], None],
        policy: RestartPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        beat: Callable[[], object] = lambda: None,
    ) -> None:
        self.components = list(components)
        self.beat = beat
        """Called once per round of checks (systemd's watchdog keep-alive): it stops when the loop does."""
        self.lock = lock
        self.unlock = unlock
        self.give_up = give_up
        self.clock = clock
        self.sleep = sleep
        self.restarts = {component.name: Restarts(policy) for component in self.components}
        self.down: dict[str, float] = {}
        """Components being recovered, and since when."""
        self.recovered: list[tuple[str, float]] = []
        """(component, seconds it was down), in order: for logs and tests."""
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Check every component every `CHECK_EVERY` seconds until cancelled (and cancel recoveries under way)."""
        try:
            while True:
                await self.check_once()
                self.beat()
                await self.sleep(CHECK_EVERY)
        finally:
            for task in self._tasks:
                task.cancel()

    async def check_once(self) -> None:
        up = [component for component in self.components if component.name not in self.down]
        problems = await asyncio.gather(*(component.check() for component in up))
        for component, why in zip(up, problems, strict=True):
            if why is not None:
                self.failed(component, why)

    def notice(self, name: str, why: str) -> None:
        """A component reported its own death (the drop logger's thread): recover it now, not at the next round."""
        for component in self.components:
            if component.name == name and name not in self.down:
                self.failed(component, why)

    def failed(self, component: Supervised, why: str) -> None:
        log.error("%s is down: %s", component.name, why)
        if not self.down:
            self.lock(f"{component.name}: {why}")
        self.down[component.name] = self.clock()
        task = asyncio.get_running_loop().create_task(self._recover(component, why))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _recover(self, component: Supervised, why: str) -> None:
        restarts = self.restarts[component.name]
        while True:
            delay = restarts.failed(self.clock())
            if delay is None:
                policy = restarts.policy
                self.give_up(
                    f"{component.name} failed {restarts.recent} times within {policy.window:.0f} s (last: {why}):"
                    " not restarted again, the lockdown stays"
                )
                return
            log.warning("%s: restart in %.1f s (failure %d)", component.name, delay, restarts.recent)
            await self.sleep(delay)
            try:
                await component.restart()
                problem = await component.check()
            except Exception as exc:  # any failure to come back is one more failure of this component
                log.exception("%s: restart failed", component.name)
                problem = f"restart failed: {type(exc).__name__}: {exc}"
            if problem is None:
                break
            why = problem
        since = self.down.pop(component.name)
        took = self.clock() - since
        self.recovered.append((component.name, took))
        log.warning("%s recovered in %.1f s", component.name, took)
        if not self.down:
            await self.unlock()


async def keep_guard_open(apply: Callable[[int], None], every: float = GUARD_EVERY, life: int = GUARD_LIFE) -> None:
    """Until cancelled: every ``every`` seconds, ``apply(life)`` (in a thread: nft must not stall the resolver).
    A failed heartbeat is logged, not fatal: the guard closes by itself if they keep failing."""
    failing = False
    while True:
        try:
            await asyncio.to_thread(apply, life)
            if failing:
                log.warning("guard table refreshed again")
            failing = False
        except Exception as exc:  # nft's error or a timeout: the next beat may succeed; if not, the guard closes
            if not failing:
                log.error("guard table not refreshed (sandbox traffic stops within %d s): %s", life, exc)
            failing = True
        await asyncio.sleep(every)
