"""The flow log in Redis (docs/flow-log.md): per sandbox, a sorted set of aggregates scored by their window's start,
kept apart from the attempt records and with its own retention, so a chatty sandbox's flows never push its
attempts out.

`FlowWriter` writes the aggregates a process took from its `egress.record.flows.FlowAggregator`: one script per
sandbox and chunk adds them and applies the retention (by age of the window, then by count, oldest first). A
member is the aggregate's JSON, so a batch replayed after a lost reply adds nothing twice. While Redis does not
answer, aggregates wait in memory, in order, up to `MAX_PENDING`; past that the oldest are dropped and counted
exactly (``lost``: aggregates, ``lost_connections``: the connections they stood for), and logged once a minute.
Reads (`read_flows`) decode what a window range holds; `egress.record.flows.merge` sums what several processes
wrote for the same key.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Final

from egress.record import flows
from egress.record.flows import FlowRecord
from egress.record.layout import sandbox_tag
from egress.record.redis_facade import STORE_ERRORS, RedisFacade, Script, ScriptCall, integer

log = logging.getLogger(__name__)

FLOW_SANDBOXES_KEY: Final = "egress:flow-sandboxes"
"""The names of the sandboxes that have flow aggregates (a set)."""
WINDOW_S: Final = 60.0
"""Seconds of one aggregation window."""
MAX_PENDING: Final = 50_000
"""Aggregates one process keeps in memory while Redis is away (about 300 bytes each); the oldest go past it."""
CHUNK: Final = 256
"""Aggregates per script call at most."""
LOG_EVERY: Final = 60.0
MAX_READ: Final = 100_000
"""Aggregates one read takes from a sandbox at most (`read_flows` says when it stopped there)."""

# KEYS: the sandbox's flow set. ARGV: max aggregates, the oldest window start kept, then score, member pairs.
WRITE_SCRIPT: Final = Script(
    """
for i = 3, #ARGV, 2 do redis.call('ZADD', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2])
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[1])
if over > 0 then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, over - 1) end
return (#ARGV - 2) / 2
""",
    integer,
)


def flows_key(sandbox: str) -> str:
    """The sandbox's flow aggregates: member = the aggregate's JSON, score = its window's start (epoch seconds).
    Hash-tagged like the sandbox's other keys (one Cluster slot)."""
    return f"egress:{{{sandbox_tag(sandbox)}}}:flows"


class FlowWriter:
    """Writes aggregates to Redis, holding them in memory while it does not answer; safe to share between
    threads (one lock)."""

    def __init__(
        self,
        redis: RedisFacade,
        max_records: int = 200_000,
        max_age_s: float = 7 * 86400.0,
        *,
        max_pending: int = MAX_PENDING,
        retry_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``max_records``, ``max_age_s``: the retention per sandbox. ``clock``: epoch seconds (the age
        retention); ``monotonic``: retries and log pacing."""
        self._redis = redis
        self._max_records = max_records
        self._max_age_s = max_age_s
        self._max_pending = max_pending
        self._retry_interval = retry_interval
        self._clock = clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._pending: collections.deque[FlowRecord] = collections.deque()
        self._retry_at = 0.0
        self._known: set[str] = set()
        self._failing_logged_at: float | None = None
        self._lost_logged_at: float | None = None
        self.written = 0
        """Aggregates Redis took (a replayed one counts again)."""
        self.lost = 0
        """Aggregates dropped because `MAX_PENDING` were waiting: the only way one is not kept."""
        self.lost_connections = 0
        """The connections those stood for."""
        self.redis_errors = 0

    @property
    def pending(self) -> int:
        """Aggregates waiting for Redis."""
        with self._lock:
            return len(self._pending)

    def write(self, records: Sequence[FlowRecord]) -> None:
        """Queue ``records`` behind those waiting and deliver what Redis takes now; never raises for Redis."""
        with self._lock:
            self._pending.extend(records)
            while len(self._pending) > self._max_pending:
                dropped = self._pending.popleft()
                self.lost += 1
                self.lost_connections += dropped.connections
            if self.lost:
                self._log_lost()
            if not self._pending or self._monotonic() < self._retry_at:
                return
            batch = list(self._pending)
            try:
                self._deliver(batch)
            except STORE_ERRORS as error:
                self._failed(error)
                return
            except Exception:  # a bug, not Redis: drop the batch counted, or it would block every later one
                log.exception("flow log: %d aggregates not writable, dropped", len(batch))
                self.lost += len(batch)
                self.lost_connections += sum(record.connections for record in batch)
            self._pending.clear()
            if self._failing_logged_at is not None:
                self._failing_logged_at = None
                log.warning("flow log: Redis answers again; %d aggregates delivered", len(batch))

    def _deliver(self, batch: list[FlowRecord]) -> None:
        by_sandbox: dict[str, list[FlowRecord]] = {}
        for record in batch:
            by_sandbox.setdefault(record.sandbox, []).append(record)
        fresh = sorted(set(by_sandbox) - self._known)
        if fresh:
            self._redis.sadd(FLOW_SANDBOXES_KEY, *fresh)
        self.written += sum(self._redis.run_each(WRITE_SCRIPT, self._calls(by_sandbox)))
        self._known.update(fresh)

    def _calls(self, by_sandbox: dict[str, list[FlowRecord]]) -> Iterator[ScriptCall]:
        oldest = repr(self._clock() - self._max_age_s)
        for sandbox, group in by_sandbox.items():
            key = flows_key(sandbox)
            for at in range(0, len(group), CHUNK):
                args: list[str | bytes | int | float] = [self._max_records, oldest]
                for record in group[at : at + CHUNK]:
                    args += [repr(record.window_start), flows.encode(record)]
                yield (key,), args

    def _failed(self, error: BaseException) -> None:
        self.redis_errors += 1
        now = self._monotonic()
        self._retry_at = now + self._retry_interval
        if self._failing_logged_at is None or now - self._failing_logged_at >= LOG_EVERY:
            self._failing_logged_at = now
            log.warning(
                "flow log: Redis failed (%s: %s): %d aggregates held in memory (at most %d; logged once a minute)",
                type(error).__name__,
                error,
                len(self._pending),
                self._max_pending,
            )

    def _log_lost(self) -> None:
        now = self._monotonic()
        if self._lost_logged_at is None or now - self._lost_logged_at >= LOG_EVERY:
            self._lost_logged_at = now
            log.error(
                "flow log: %d aggregates (%d connections) dropped so far: more than %d waited for Redis",
                self.lost,
                self.lost_connections,
                self._max_pending,
            )


def flow_sandboxes(redis: RedisFacade) -> list[str]:
    """Names of the sandboxes that have flow aggregates, sorted."""
    return sorted(redis.smembers(FLOW_SANDBOXES_KEY))


def read_flows(
    redis: RedisFacade, sandbox: str, since: float | None, until: float | None, limit: int = MAX_READ
) -> tuple[list[FlowRecord], bool]:
    """The sandbox's aggregates whose windows may hold connections in [since, until] (as stored: not merged), at
    most ``limit`` (the oldest windows first), and whether there were more."""
    low = "-inf" if since is None else repr(since - WINDOW_S)
    high = "+inf" if until is None else repr(until)
    members = redis.zrange_by_score(flows_key(sandbox), low, high, 0, limit + 1)
    records = []
    for member in members[:limit]:
        try:
            records.append(flows.decode(member))
        except ValueError:  # a member another version wrote: skipped, the rest still answers
            log.warning("flow log: a malformed aggregate of %s skipped", sandbox)
    return records, len(members) > limit
