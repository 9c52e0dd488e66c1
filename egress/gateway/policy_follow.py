"""The gateway's follower of the fleet's policy: it polls the applied version in Redis
(`egress.record.policy_store`), applies a new one through the very protocol SIGHUP uses (`Reloader.install`:
every component or none), and reports per gateway what it runs.

How the gateway's own ``--policy`` file and the fleet's version relate (docs/rules-lifecycle.md):

- the file is the bootstrap: the gateway starts on it (it needs no Redis to start);
- the fleet's applied version wins whenever it changes: on the first poll that reaches Redis, and on every later
  apply or rollback, the gateway applies it (or, when it cannot, keeps what it runs and reports ``failed`` with
  the reason);
- SIGHUP is the local operator's override: the file is applied and reported as ``local`` until the next fleet
  version.

A refused version is tried again after `RETRY_REFUSED` seconds (not on every poll).

A poll that does not reach Redis changes nothing: the gateway keeps what it runs and tries again next interval
(the outage is logged once). Reports that Redis did not take are written again on the next poll that reaches it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from egress.gateway import validate
from egress.gateway.reload import PolicyVersion, ValidationFailed
from egress.policy.yamlnodes import RulesError
from egress.record.policy_store import STORE_ERRORS, GatewayReport, PolicyHistory, State

log = logging.getLogger("egress.gateway")

POLL_INTERVAL: Final = 1.0
"""Seconds between two reads of the applied version (one small HGETALL each)."""
RETRY_REFUSED: Final = 60.0
"""Seconds before a refused fleet version is tried again: a refusal may pass (the gateway was locked down while a
component restarted, a worker was slow), and a gateway that lags the fleet should keep saying so."""
ERROR_CHARS: Final = 2000
"""A failed apply's reason as reported (the whole of it is in the gateway's log)."""


class Installs(Protocol):
    """What the follower applies through (`egress.gateway.reload.Reloader`)."""

    @property
    def current(self) -> PolicyVersion:
        """The version in force in every component."""

    async def install(self, version: PolicyVersion, origin: str) -> str | None:
        """Apply ``version`` everywhere; ``None`` when it is in force, else why the running one stays."""


class PolicyFollower:
    """Follows the fleet's applied version for the gateway ``gateway``."""

    def __init__(
        self,
        history: PolicyHistory,
        gateway: str,
        installer: Installs,
        interval: float = POLL_INTERVAL,
        retry_refused: float = RETRY_REFUSED,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        parse: Callable[[str, str], tuple[PolicyVersion, float]] = validate.parse,
    ) -> None:
        self.history = history
        self._parse = parse
        """Validates a version's text in a child process (egress.gateway.validate): version and CPU seconds."""
        self.gateway = gateway
        self.installer = installer
        self.interval = interval
        self.retry_refused = retry_refused
        self._clock = clock
        self._sleep = sleep
        self.seen: int | None = None
        """The fleet version last acted on (applied, or refused): the next one to act on is a different one."""
        self.fleet: int | None = None
        """The fleet version the gateway runs; None while it runs its own file."""
        self._installing: str | None = None
        """The digest of the fleet version being installed (its commit is no local reload)."""
        self._refused_at: float | None = None
        """When the version `seen` was refused (None: it was not)."""
        self._unsent: GatewayReport | None = None
        """The last report, until Redis took it."""
        self._outage = False

    async def run(self) -> None:
        """Poll until cancelled; raises `egress.gateway.reload.SplitReload` (the supervisor fails closed)."""
        self._report("local", None)  # what the gateway booted on, until the first poll says otherwise
        while True:
            await self.step()
            await self._sleep(self.interval)

    def committed(self, version: PolicyVersion) -> None:
        """The supervisor's hook after every committed reload or install: a SIGHUP's file is a local override."""
        if version.digest != self._installing:
            self.fleet = None
            self._refused_at = None  # the local operator chose: a refused fleet version is not retried over it
            self._report("local", None)

    async def step(self) -> None:
        """One poll: act on a new fleet version, and send the report Redis has not taken yet."""
        try:
            applied = await asyncio.to_thread(self.history.applied)
        except STORE_ERRORS as exc:
            if not self._outage:
                log.warning("the fleet's policy is not readable (%s): the running policy stays, retrying", exc)
            self._outage = True
            return
        if self._outage:
            log.info("the fleet's policy is readable again")
            self._outage = False
        if applied is not None and (applied.version != self.seen or self._retry_due()):
            self.seen = applied.version
            self._refused_at = None
            await self._follow(applied.version)
        elif applied is not None and self._local_is(applied.digest):  # the file is the fleet's version: say so
            self.fleet = applied.version
            self._report("applied", applied.version)
        await self._send()

    async def _follow(self, number: int) -> None:
        origin = f"fleet version {number}"
        try:
            text = await asyncio.to_thread(self.history.text, number)
        except STORE_ERRORS as exc:
            self.seen = None  # not acted on: try again on the next poll
            log.warning("the text of %s is not readable (%s): the running policy stays, retrying", origin, exc)
            return
        if text is None:
            self._refused(number, f"{origin} is not in the history")
            return
        started = time.monotonic()
        try:
            version, cpu = await asyncio.to_thread(self._parse, text, origin)
        except RulesError as exc:
            self._refused(number, f"does not validate:\n{exc}")
            return
        except ValidationFailed as exc:
            self._refused(number, f"was not validated: {exc}")
            return
        elapsed = time.monotonic() - started
        log.info("%s (%s) read and validated in %.3f s (cpu %.3f s)", origin, version.label, elapsed, cpu)
        if version.digest == self.installer.current.digest:
            self.fleet = number
            self._report("applied", number)
            log.info("policy %s in force is %s", version.label, origin)
            return
        self._installing = version.digest
        try:
            why = await self.installer.install(version, origin)
        finally:
            self._installing = None
        if why is not None:
            self._refused(number, why)
            return
        self.fleet = number
        self._report("applied", number)

    def _retry_due(self) -> bool:
        return self._refused_at is not None and self._clock() - self._refused_at >= self.retry_refused

    def _local_is(self, digest: str) -> bool:
        """A local reload's report is waiting and the file it ran is ``digest``."""
        unsent = self._unsent
        return unsent is not None and unsent.state == "local" and unsent.digest == digest

    def _refused(self, number: int, why: str) -> None:
        log.error(
            "fleet version %d not applied, the running policy %s stays: %s",
            number,
            self.installer.current.label,
            why,
        )
        self._refused_at = self._clock()
        self._report("failed", number, why)

    def _report(self, state: State, wanted: int | None, error: str = "") -> None:
        self._unsent = GatewayReport(
            gateway=self.gateway,
            state=state,
            digest=self.installer.current.digest,
            version=self.fleet,
            time=self._clock(),
            wanted=wanted,
            error=error[:ERROR_CHARS],
        )

    async def _send(self) -> None:
        report = self._unsent
        if report is None:
            return
        try:
            await asyncio.to_thread(self.history.report, report)
        except STORE_ERRORS as exc:
            log.debug("report not written (%s): again on the next poll", exc)
            return
        if self._unsent is report:
            self._unsent = None
