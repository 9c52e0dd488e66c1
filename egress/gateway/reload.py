"""The reload protocol: one validated policy object, prepared by every component, then committed by all or by none.

A reload reads the policy file's bytes once, and parses and validates them off the event loop (the gateway does
it in a child process, egress.gateway.validate, so the parse holds none of its locks) into a `PolicyVersion`:
the frozen `Policy` and the SHA-256 of those bytes. That same object goes to every component, each a `Participant`:

1. **prepare**: every component builds and checks what it needs (nftables: the rendered table, checked with
   ``nft -c``; a proxy worker: the object, received over its control channel) and answers within a deadline. A
   refusal, an error or silence is a refusal: every component drops what it prepared, nothing is applied, and one
   error line names the component and its reason. The running policy stays in force everywhere.
2. **commit**: the first participant (the nftables table: one transaction) commits alone; if that fails, nothing
   has changed and the others drop what they prepared, as for a refusal. Then every other component swaps the
   object in. Only then is the new version the current one (`Reloader.current`, the supervisor's policy).

A commit that fails after the table was applied leaves components on different policies: `SplitReload`, which
the supervisor treats as a dead component (lockdown). Requests that arrive during a reload (SIGHUP) are folded
into one more reload after it, so the last request always reads the file's latest content.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

from egress.nft import runner
from egress.nft.render import GatewaySettings, render
from egress.policy import links
from egress.policy.loader import max_bytes, parse_policy
from egress.policy.model import Policy
from egress.policy.yamlnodes import Problem, RulesError, decode
from egress.record.policy_store import version_label

log = logging.getLogger("egress.gateway")

PREPARE_DEADLINE: Final = 60.0
"""Seconds every component has to prepare (a proxy worker unpickles the policy: seconds for a policy of many MB)."""
COMMIT_DEADLINE: Final = 10.0
"""Seconds each component other than nftables has to swap the prepared policy in (nft's own timeout bounds it)."""


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    """A validated policy and the SHA-256 of the bytes it was built from: what every component runs and reports."""

    policy: Policy
    digest: str
    """Hex SHA-256 of the policy file's bytes as the supervisor read them."""
    payload: bytes = field(default=b"", compare=False, repr=False)
    """This version pickled as the proxy workers receive it (egress.gateway.control), when the process that
    validated it made it (egress.gateway.validate); empty: the supervisor pickles it."""

    def __reduce__(self) -> tuple[Any, ...]:
        return PolicyVersion, (self.policy, self.digest)  # never its own payload

    @property
    def label(self) -> str:
        """How logs name the version (``sha256:`` and the first 16 hex digits)."""
        return version_label(self.digest)


def read_version(path: str | Path) -> PolicyVersion:
    """Read the policy file's bytes once, validate them and hash them; raise `RulesError` with every problem. The
    rule indexes are not built (`load_version` builds them; a child process hands the policy back without them)."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise RulesError([Problem(str(path), 1, f"cannot read: {error}")]) from None
    text = decode(data, str(path), max_bytes())  # the size cap and the bad byte's line, as `egress rules check`
    return PolicyVersion(parse_policy(text, str(path)), hashlib.sha256(data).hexdigest())


def text_version(text: str, origin: str) -> PolicyVersion:
    """A policy's text (from the fleet's history, egress.record.policy_store) validated and hashed as
    `read_version` does a file's bytes: the same text gives the same digest either way. Indexes not built."""
    return PolicyVersion(parse_policy(text, origin), hashlib.sha256(text.encode()).hexdigest())


def load_version(path: str | Path) -> PolicyVersion:
    """`read_version` with the rule indexes built (the policy ready for the resolver and the gate)."""
    version = read_version(path)
    version.policy.index()
    return version


def parse_version(text: str, origin: str) -> PolicyVersion:
    """`text_version` with the rule indexes built."""
    version = text_version(text, origin)
    version.policy.index()
    return version


class ValidationFailed(Exception):
    """The process validating a policy did not answer (egress.gateway.validate: it could not start, died or was
    killed): nothing is applied."""


class Refused(Exception):
    """Raised by `Participant.prepare`: the component cannot take this policy; the message says why."""


class ReloadRefused(Exception):
    """A component refused (or failed to answer) before anything changed: every component keeps the old policy."""

    def __init__(self, component: str, reason: str) -> None:
        super().__init__(f"{component}: {reason}")
        self.component = component
        self.reason = reason


class SplitReload(Exception):
    """A commit failed after the table was applied: components now run different policies."""


class Participant(Protocol):
    """A component that takes part in reloads."""

    @property
    def name(self) -> str:
        """How error lines name the component (``resolver``, ``proxy-1``...)."""

    async def prepare(self, version: PolicyVersion) -> None:
        """Build and check what this component needs to run ``version``; raise `Refused` if it cannot."""

    async def commit(self, version: PolicyVersion) -> None:
        """Swap the prepared ``version`` in."""

    async def abort(self, version: PolicyVersion) -> None:
        """Drop what was prepared for ``version``; keep running the current policy."""


@dataclass(frozen=True, slots=True)
class Swap:
    """An in-process component: nothing to build, and committing is one attribute assignment (which the threads
    that read it, such as the drop logger's, see whole)."""

    name: str
    swap: Callable[[Policy], None]

    async def prepare(self, version: PolicyVersion) -> None:
        return None

    async def commit(self, version: PolicyVersion) -> None:
        self.swap(version.policy)

    async def abort(self, version: PolicyVersion) -> None:
        return None


class NftTable:
    """The kernel's part: prepare renders the table and has nft check it (``nft -c``), commit applies it as one
    transaction that keeps the drop counters (`egress.nft.runner.replace_table`: what was counted and not yet read
    is read after the reload, not lost). Both run in a worker thread: a large table must not stall the resolver's
    event loop."""

    name = "nftables"

    def __init__(
        self,
        settings: GatewaySettings,
        apply: Callable[[str], None] | None = None,
        check: Callable[[str], None] = runner.check,
        quarantined: Callable[[], Iterable[str]] = tuple,
    ) -> None:
        """``quarantined``: the sandboxes cut off now, which the new table keeps cut off. ``apply``: loads the
        script (default: `runner.replace_table` on the settings' table)."""
        self.settings = settings
        self._quarantined = quarantined
        self._apply = apply if apply is not None else self._replace
        self._check = check
        self._prepared: tuple[str, str] | None = None
        """(digest, script) of the prepared version."""

    def _replace(self, script: str) -> None:
        runner.replace_table(script, self.settings.table)

    async def prepare(self, version: PolicyVersion) -> None:
        # Sandboxes behind one link, with --sandbox-if known (the loader saw only the interfaces the policy names):
        # the start's pre-flight refuses them, and so does a reload (`egress.policy.links`).
        shared = links.shared(version.policy.sandboxes, self.settings.sandbox_if)
        if shared:
            raise Refused("; ".join(found.message() for found in shared))
        try:
            script = await asyncio.to_thread(render, version.policy, self.settings, self._quarantined())
            await asyncio.to_thread(self._check, script)
        except (ValueError, runner.NftError) as exc:
            raise Refused(str(exc)) from exc
        self._prepared = (version.digest, script)

    async def commit(self, version: PolicyVersion) -> None:
        prepared, self._prepared = self._prepared, None
        if prepared is None or prepared[0] != version.digest:
            raise RuntimeError(f"{version.label} was not prepared")
        await asyncio.to_thread(self._apply, prepared[1])

    async def abort(self, version: PolicyVersion) -> None:
        self._prepared = None


async def _within(step: Awaitable[None], deadline: float | None) -> str | None:
    """Run one participant's step; ``None`` when it succeeded, else why not (a refusal, an error, silence)."""
    try:
        await asyncio.wait_for(step, deadline)
    except Refused as exc:
        return str(exc) or "refused"
    except TimeoutError:
        return f"no answer within {deadline:g} s"
    except Exception as exc:  # any failure of one component is that component's refusal, never the gateway's crash
        log.debug("reload step failed", exc_info=True)
        return f"{type(exc).__name__}: {exc}"
    return None


class Reloader:
    """Runs the protocol over ``participants`` (the first is the one whose commit may fail cleanly: nftables)."""

    def __init__(
        self,
        path: str | Path,
        participants: Sequence[Participant],
        current: PolicyVersion,
        on_commit: Callable[[PolicyVersion], None] | None = None,
        load: Callable[[str | Path], PolicyVersion] = load_version,
        prepare_deadline: float = PREPARE_DEADLINE,
        commit_deadline: float = COMMIT_DEADLINE,
    ) -> None:
        if not participants:
            raise ValueError("a reload needs at least one participant")
        self.path = path
        self.participants = tuple(participants)
        self.current = current
        self.on_commit = on_commit
        self.load = load
        self.prepare_deadline = prepare_deadline
        self.commit_deadline = commit_deadline
        self._wanted = asyncio.Event()
        self.timings = (0.0, 0.0)
        """Seconds the last transaction spent preparing, then committing (the log line and bench/rules.py)."""
        self.cpu = (0.0, 0.0)
        """CPU seconds this process (the supervisor: every thread) spent meanwhile: on a busy machine wall-clock
        measures the machine too, CPU time the work (the workers' own are in their processes)."""
        self._one = asyncio.Lock()
        """Held by each reload and each install: a SIGHUP and a fleet version never interleave their steps."""

    def request(self) -> None:
        """Ask for a reload (the SIGHUP handler): now, or right after the one under way."""
        self._wanted.set()

    async def serve(self) -> None:
        """Reload whenever asked, one at a time, until cancelled; raises `SplitReload`."""
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            await self.reload()

    async def reload(self) -> PolicyVersion | None:
        """Read, validate, prepare and commit; the version now in force everywhere, or ``None`` when the running
        one stays (the error is logged). Raises `SplitReload`."""
        try:
            version = await asyncio.to_thread(self.load, self.path)
        except RulesError as exc:
            log.error("policy reload rejected, the running policy stays in force:\n%s", exc)
            return None
        except ValidationFailed as exc:
            log.error("policy reload not validated, the running policy stays in force: %s", exc)
            return None
        except Exception:  # a reader's bug must not end reloading: this reload fails, the next may work
            log.exception("policy reload failed reading %s, the running policy stays in force", self.path)
            return None
        why = await self.install(version, str(self.path))
        return version if why is None else None

    async def install(self, version: PolicyVersion, origin: str) -> str | None:
        """Prepare and commit an already validated ``version`` (from ``origin``, for the log) after any reload
        under way; ``None`` when it is in force everywhere, else why the running policy stays (logged). Raises
        `SplitReload`."""
        async with self._one:
            try:
                await self.transact(version)
            except ReloadRefused as exc:
                log.error(
                    "policy reload refused by %s: %s; the running policy %s stays in force everywhere (refused: %s "
                    "from %s)",
                    exc.component,
                    exc.reason,
                    self.current.label,
                    version.label,
                    origin,
                )
                return f"refused by {exc}"
            self.current = version
            if self.on_commit is not None:
                self.on_commit(version)
        names = ", ".join(participant.name for participant in self.participants)
        prepare, commit = self.timings
        log.info(
            "policy %s from %s in force in %s (prepare %.3f s, commit %.3f s; supervisor cpu %.3f s, %.3f s)",
            version.label,
            origin,
            names,
            prepare,
            commit,
            *self.cpu,
        )
        return None

    async def transact(self, version: PolicyVersion) -> None:
        """Prepare everywhere, then commit everywhere; raise `ReloadRefused` (nothing changed) or `SplitReload`."""
        started, cpu = time.monotonic(), time.process_time()
        steps = [_within(p.prepare(version), self.prepare_deadline) for p in self.participants]
        refusals = [
            (p.name, why) for p, why in zip(self.participants, await asyncio.gather(*steps), strict=True) if why
        ]
        prepared, prepared_cpu = time.monotonic(), time.process_time()
        if refusals:
            await self._abort(self.participants, version)
            raise ReloadRefused(*refusals[0])
        first, *rest = self.participants
        why = await _within(first.commit(version), None)  # no deadline: nft's own bounds it, and a late apply
        if why is not None:  # after we gave up would leave the kernel on a policy nobody else runs
            await self._abort(rest, version)
            raise ReloadRefused(first.name, why)
        steps = [_within(p.commit(version), self.commit_deadline) for p in rest]
        failed = [f"{p.name} ({why})" for p, why in zip(rest, await asyncio.gather(*steps), strict=True) if why]
        self.timings = (prepared - started, time.monotonic() - prepared)
        self.cpu = (prepared_cpu - cpu, time.process_time() - prepared_cpu)
        if failed:
            raise SplitReload(f"{version.label} applied to {first.name} but not committed by {', '.join(failed)}")

    async def _abort(self, participants: Sequence[Participant], version: PolicyVersion) -> None:
        results = await asyncio.gather(*(_within(p.abort(version), self.commit_deadline) for p in participants))
        for participant, why in zip(participants, results, strict=True):
            if why is not None:
                log.warning("%s did not drop the refused policy %s: %s", participant.name, version.label, why)
