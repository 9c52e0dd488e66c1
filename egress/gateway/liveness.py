"""Liveness bookkeeping for the supervisor, pure: the clock is always an argument, so tests play time.

- `Restarts`: one component's failures; how long to wait before restarting it (exponential backoff) and when to
  give up (too many failures within a window: the lockdown then stays, and the supervisor says so loudly).
- `Answers`: when a component that is asked regularly (a worker's ping, the resolver's probe query) last
  answered; it counts as hung once no answer came for a deadline.
- `Drain`: whether a queue progresses (the recorder's): stalled when its backlog has not fallen for a deadline.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

CHECK_EVERY: Final = 1.0
"""Seconds between two rounds of liveness checks."""
ANSWER_DEADLINE: Final = 10.0
"""Seconds a worker or the resolver may go without answering before it counts as hung: a SIGSTOPped worker is
noticed within about 11 s (one check round more). Shorter made loaded machines (2 busy cores) restart healthy
workers whose event loop was busy for a few seconds."""
START_GRACE: Final = 30.0
"""Seconds a component just (re)started has for its first answer (a worker builds its detectors and starts
mitmproxy after it took its policy)."""
DRAIN_DEADLINE: Final = 30.0
"""Seconds the recorder's backlog may stay at or above its level before the recorder counts as stalled (Redis
calls time out well before that; the spool takes over when Redis is away)."""


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """How a failed component is restarted (docs/gateway.md, Decisions)."""

    first_delay: float = 0.5
    """Seconds before the first restart after a failure."""
    factor: float = 2.0
    """Each further failure within ``window`` multiplies the delay by this."""
    max_delay: float = 30.0
    max_failures: int = 5
    """This many failures within ``window`` and the supervisor gives up: the lockdown stays."""
    window: float = 300.0

    def __post_init__(self) -> None:
        if self.first_delay < 0 or self.factor < 1 or self.max_delay < self.first_delay:
            raise ValueError(f"bad backoff: {self}")
        if self.max_failures < 1 or self.window <= 0:
            raise ValueError(f"bad give-up rule: {self}")


class Restarts:
    """One component's failures within the policy's window."""

    def __init__(self, policy: RestartPolicy | None = None) -> None:
        self.policy = policy or RestartPolicy()
        self.times: deque[float] = deque()

    def failed(self, now: float) -> float | None:
        """Count a failure at ``now``: seconds to wait before restarting, or ``None``: give up."""
        policy = self.policy
        while self.times and now - self.times[0] >= policy.window:
            self.times.popleft()
        self.times.append(now)
        if len(self.times) >= policy.max_failures:
            return None
        return min(policy.first_delay * policy.factor ** (len(self.times) - 1), policy.max_delay)

    @property
    def recent(self) -> int:
        """Failures counted in the window (as of the last one)."""
        return len(self.times)


class Answers:
    """When a component last answered; hung once it has been silent for ``deadline`` seconds, or, before its first
    answer (a process that has just started still builds what it serves with), for ``grace`` seconds."""

    def __init__(self, now: float, deadline: float = ANSWER_DEADLINE, grace: float = START_GRACE) -> None:
        self.deadline = deadline
        self.grace = grace
        self.last = now
        self.ever = False

    def answered(self, now: float) -> None:
        self.last = max(self.last, now)
        self.ever = True

    def hung(self, now: float) -> bool:
        return now - self.last > (self.deadline if self.ever else self.grace)

    def silent_for(self, now: float) -> float:
        return max(0.0, now - self.last)


class Drain:
    """A queue's progress: the backlog empty or smaller than at the check before, or more done (a count that only
    grows: records written, spooled or counted lost); stalled when none of these happened for ``deadline``
    seconds. A consumer that is alive takes something between two checks a second apart."""

    def __init__(self, now: float, deadline: float = DRAIN_DEADLINE) -> None:
        self.deadline = deadline
        self.since = now
        """When progress was last seen."""
        self.previous = 0
        self.done = 0

    def seen(self, now: float, backlog: int, done: int = 0) -> None:
        # Progress, or it was empty before (the wait starts now).
        if backlog == 0 or backlog < self.previous or self.previous == 0 or done > self.done:
            self.since = now
        self.previous = backlog
        self.done = max(self.done, done)

    def stalled(self, now: float) -> bool:
        return self.previous > 0 and now - self.since > self.deadline
