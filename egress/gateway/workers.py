"""The proxy workers as the supervisor keeps them: one `WorkerSlot` per proxy port, whose process can be replaced.

A slot is a reload `Participant` under the worker's name whatever process is behind it, and a supervised component
(`check`, `restart`): the process must run and answer a ping (a ``STATUS`` request on its control channel) within
`egress.gateway.liveness.ANSWER_DEADLINE`. Stopping is SIGTERM first (the worker stops accepting and flushes its
records) and SIGKILL only after `TERM_DEADLINE`, or at once for a worker that does not answer (a stopped process
keeps SIGTERM pending forever). On a lockdown every serving worker is told to abort its open connections
(`cut_open`: the ``CUT`` request); one that cannot be told within `CUT_DEADLINE` is killed, its relays' sockets
then reset by their linger. Workers are started from the supervisor's main thread: their death signal
(``PR_SET_PDEATHSIG``, set by the worker) is tied to the thread that forked them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Final

from egress.gateway.config import DnsWorkerConfig, GatewayConfig, WorkerConfig
from egress.gateway.control import Payloads, WorkerLink, socket_pair
from egress.gateway.liveness import Answers
from egress.gateway.reload import PolicyVersion

log = logging.getLogger("egress.gateway")

START_DEADLINE: Final = 60.0
"""Seconds a starting proxy worker has to take its first policy (it imports mitmproxy first)."""
TERM_DEADLINE: Final = 10.0
"""Seconds workers have to stop after SIGTERM (they flush their records) before SIGKILL."""
CUT_DEADLINE: Final = 2.0
"""Seconds a worker has to answer a lockdown's ``CUT`` (it aborts its connections on its event loop) before it is
killed: what it holds must not go on reaching the destination while the lockdown is in force."""
PING_WAIT: Final = 1.0
"""Seconds one ping waits; a worker counts as hung only after `ANSWER_DEADLINE` of silence."""


def make_ca(confdir: str, name: str = "", permitted: Sequence[str] = ()) -> None:
    """One CA for every worker, made before any starts (only the workers' modules import mitmproxy): named for the
    gateway, and constrained to the DNS subtrees ``permitted`` if any (`egress.proxy.mitm.ca`)."""
    permits = [arg for domain in permitted for arg in ("--permit", domain)]
    subprocess.run([sys.executable, "-m", "egress.proxy.mitm.ca", confdir, "--name", name, *permits], check=True)


class WorkerSlot:
    module = "egress.gateway.worker"
    kind = "proxy worker"
    config_file = "worker-{}.json"

    def __init__(
        self,
        config: GatewayConfig,
        index: int,
        payloads: Payloads,
        current: Callable[[], PolicyVersion],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``current``: the version in force (what a restarted worker must run)."""
        self.worker: WorkerConfig | DnsWorkerConfig = self._config(config, index)
        self.path = Path(config.state_dir) / self.config_file.format(index)
        self.worker.write(self.path)
        self.index = index
        self.payloads = payloads
        self.current = current
        self.clock = clock
        self.process: subprocess.Popen[bytes] | None = None
        self.link: WorkerLink | None = None
        self.answers = Answers(clock())
        self.serving = False
        """The process took its first policy (`start` is done): it may hold open connections."""

    @staticmethod
    def _config(config: GatewayConfig, index: int) -> WorkerConfig | DnsWorkerConfig:
        return WorkerConfig.of(config, index)

    @property
    def name(self) -> str:
        return self.worker.name

    def spawn(self) -> None:
        mine, theirs = socket_pair()
        argv = [sys.executable, "-m", self.module, "--config", str(self.path)]
        argv += ["--control", str(theirs.fileno()), "--parent", str(os.getpid())]
        self.process = subprocess.Popen(argv, pass_fds=(theirs.fileno(),))
        theirs.close()
        self.link = WorkerLink(self.name, mine, self.payloads)
        self.answers = Answers(self.clock())
        self.serving = False
        log.info("%s %d (pid %d) on port %d", self.kind, self.index, self.process.pid, self.worker.port)

    async def start(self) -> None:
        """Spawn the process and give it the version in force, by the same prepare and commit as every reload."""
        self.spawn()
        version = self.current()
        await asyncio.wait_for(self._link().prepare(version), START_DEADLINE)
        await asyncio.wait_for(self._link().commit(version), START_DEADLINE)
        if self.current().digest != version.digest:  # a reload committed meanwhile: catch up
            await self.prepare(self.current())
            await self.commit(self.current())
        self.answers = Answers(self.clock())  # from now on it must answer pings
        self.serving = True

    def _link(self) -> WorkerLink:
        if self.link is None:
            raise RuntimeError(f"{self.name} is not running")
        return self.link

    async def prepare(self, version: PolicyVersion) -> None:
        await self._link().prepare(version)

    async def commit(self, version: PolicyVersion) -> None:
        await self._link().commit(version)

    async def abort(self, version: PolicyVersion) -> None:
        await self._link().abort(version)

    async def check(self) -> str | None:
        """Why this worker is not alive (exited, or silent for too long), or ``None``."""
        process = self.process
        if process is None:
            return "not started"
        if process.poll() is not None:
            return f"pid {process.pid} exited with {process.returncode}"
        link = self.link
        if link is None or link.busy:  # a reload is talking to it: that has its own deadlines
            self.answers.answered(self.clock())
            return None
        try:
            await asyncio.wait_for(link.status(), PING_WAIT)
        except Exception as exc:  # no answer, whatever the reason: only the silence's length decides
            log.debug("%s: ping: %s: %s", self.name, type(exc).__name__, exc)
        else:
            self.answers.answered(self.clock())
        now = self.clock()
        if self.answers.hung(now):
            return f"pid {process.pid} has not answered a ping for {self.answers.silent_for(now):.0f} s (hung)"
        return None

    async def restart(self) -> None:
        await stop_workers([self], hung=True)
        await self.start()


class DnsWorkerSlot(WorkerSlot):
    """A resolver process past the first (`egress.gateway.dnsworker`): supervised as a proxy worker is (its process
    runs and answers pings on its control channel, a reload participant under its name), and alive only while it
    also answers a real DNS query on its port (`egress.gateway.components.ask`, from loopback: a source in no
    sandbox, answered by its socket 0), as the supervisor's own resolver must."""

    module = "egress.gateway.dnsworker"
    kind = "resolver process"
    config_file = "resolver-{}.json"

    def __init__(
        self,
        config: GatewayConfig,
        index: int,
        payloads: Payloads,
        current: Callable[[], PolicyVersion],
        ask: Callable[[int], Awaitable[bool]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``ask``: whether a resolver on a loopback port answers a probe query (`egress.gateway.components.ask`)."""
        super().__init__(config, index, payloads, current, clock)
        self.ask = ask
        self.probed = Answers(clock())

    @staticmethod
    def _config(config: GatewayConfig, index: int) -> DnsWorkerConfig:
        return DnsWorkerConfig.of(config, index)

    async def start(self) -> None:
        await super().start()
        self.probed = Answers(self.clock())

    async def check(self) -> str | None:
        why = await super().check()
        if why is not None or not self.serving:
            return why
        if await self.ask(self.worker.port):
            self.probed.answered(self.clock())
        now = self.clock()
        if self.probed.hung(now):
            return f"no answer to a probe query on port {self.worker.port} for {self.probed.silent_for(now):.0f} s"
        return None


async def cut_open(slots: Iterable[WorkerSlot], why: str, deadline: float = CUT_DEADLINE) -> None:
    """The lockdown: tell every serving worker to abort its open connections (``why``: the reason each close is
    logged with); kill one that cannot be told within ``deadline`` (its channel dead, hung, or it could not cut).
    A slot still starting holds nothing yet, and a dead one is its own cause of the lockdown: both are left."""

    async def cut(slot: WorkerSlot) -> None:
        process, link = slot.process, slot.link
        if process is None or link is None or not slot.serving or process.poll() is not None:
            return
        try:
            closed = await asyncio.wait_for(link.cut(why), deadline)
        except Exception as exc:  # whatever the reason, it may still be sending: it must die
            log.error("%s (pid %d) could not be told to cut its connections (%s: %s): SIGKILL",
                      slot.name, process.pid, type(exc).__name__, exc)  # fmt: skip
            process.kill()
        else:
            log.warning("%s (pid %d): %s: %d open connection(s) aborted", slot.name, process.pid, why, closed)

    await asyncio.gather(*(cut(slot) for slot in slots))


async def stop_workers(slots: Iterable[WorkerSlot], hung: bool = False) -> None:
    """SIGTERM to every running worker, SIGKILL to those still there after `TERM_DEADLINE` (``hung``: SIGKILL at
    once), then close the control channels. Waits in a thread: the resolver shares this event loop."""
    slots = list(slots)
    running = [slot.process for slot in slots if slot.process is not None and slot.process.poll() is None]
    for process in running:
        process.kill() if hung else process.terminate()
    deadline = time.monotonic() + TERM_DEADLINE
    for process in running:
        try:
            await asyncio.to_thread(process.wait, max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("proxy worker pid %d did not stop within %.0f s of SIGTERM: SIGKILL", process.pid, TERM_DEADLINE)
            process.kill()
            await asyncio.to_thread(process.wait, 5)
    for slot in slots:
        if slot.process is not None and slot.process.poll() is None:  # not yet started when the stop began
            slot.process.kill()
            await asyncio.to_thread(slot.process.wait, 5)
        if slot.link is not None:
            slot.link.close()
            slot.link = None
