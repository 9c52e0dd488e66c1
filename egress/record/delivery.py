"""Delivery of attempt records to Redis: exactly once, in order, and never lost while Redis is away.

`write` cuts a batch into entries (`egress.record.layout`) and runs one script per entry that stores it only if
its seen key is new (a replay stores nothing twice) and applies the retention; the entries go out in one round
trip (`RedisFacade.run_each`). On any Redis error (down, timeout, cluster reshaping) the batch goes to the disk
spool (`egress.record.spool`), and `drain` delivers spooled batches in order once Redis answers. While the spool
holds anything, new batches queue behind it, so the stream stays in arrival order. A batch the spool refuses (full,
or its disk is) is counted in ``lost``. Failures are logged once a minute at most, not once per batch.
docs/records.md, "Delivery guarantees".
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Final

from egress.record import layout, stats
from egress.record.layout import (
    SANDBOXES_KEY,
    encode_entry,
    entry_chunks,
    index_key,
    is_finding,
    seen_key,
    state_key,
    stream_key,
)
from egress.record.redis_facade import STORE_ERRORS, RedisFacade, Script, ScriptCall, integer
from egress.record.schema import AttemptRecord
from egress.record.spool import Spool, SpoolFull
from egress.record.urls import shown

log = logging.getLogger(__name__)

DRAIN_PER_WRITE: Final = 64
"""Spooled batches a `write` delivers before returning (a background `drain` does the rest)."""
TRIM_PER_WRITE: Final = 1_000
"""Old entries one write drops at most (the next writes go on)."""
LOG_EVERY: Final = 60.0
"""Seconds between two log lines about the same trouble (Redis failing, records lost)."""

# KEYS: stream, index, state hash, seen key of the entry. ARGV: max records, max age (ms), seen ttl (s), number of
# records n, time of the first record, the records (one JSON array), "1" when the entry holds findings, else "0"
# (`layout.entry_chunks` never mixes the two). Stores the entry unless its seen key exists (a finding entry with
# the field ``f``), then applies the retention; returns n when stored, 0 for a replay.
# - Size, per kind: while the policy records (``records`` less ``findings``) are more than the max records, the
#   oldest policy entry goes; while the findings are more, the oldest finding entry goes. A flood of policy
#   refusals (the agent's own, cheap to make) cannot push a finding out (red team 14). Each kind keeps a cursor
#   (``head-p``, ``head-f``: no entry of its kind lies before it), so an entry of the other kind is stepped over
#   once, not at every write.
# - Age: when the oldest entry may have outlived the max age (Redis's clock: stream ids), such entries go, whatever
#   their kind; the script notes when the oldest left will be due, so most writes do not look at it.
# - What either trim drops is counted in the state hash (``trimmed-size``, ``trimmed-age``, and of those the
#   findings: ``trimmed-size-findings``, ``trimmed-age-findings``; `query.retention` reads them), so a record that
#   is gone is still known to have been kept once.
# Never the entry just written; at most TRIM_PER_WRITE entries looked at per write (the next writes go on).
# The attempt counters (egress.record.stats) come last in KEYS and ARGV and are added with the entry (COUNT_LUA).
WRITE_SCRIPT: Final = Script(
    """
if not redis.call('SET', KEYS[4], '1', 'NX', 'EX', ARGV[3]) then return 0 end
COUNT_LUA
local finding = ARGV[7] == '1'
local id
if finding then
  id = redis.call('XADD', KEYS[1], '*', 'n', ARGV[4], 'records', ARGV[6], 'f', '1')
else
  id = redis.call('XADD', KEYS[1], '*', 'n', ARGV[4], 'records', ARGV[6])
end
TENS_LUA
redis.call('ZADD', KEYS[2], ARGV[5], id)
local total = redis.call('HINCRBY', KEYS[3], 'records', ARGV[4])
local findings = redis.call('HINCRBY', KEYS[3], 'findings', finding and ARGV[4] or 0)
local now = tonumber(string.match(id, '^(%d+)-'))
local max_records, max_age = tonumber(ARGV[1]), tonumber(ARGV[2])
local budget = TRIM_PER_WRITE
local function holds_findings(entry)
  for j = 1, #entry[2], 2 do if entry[2][j] == 'f' then return true end end
  return false
end
local function drop(entry, why)
  local n = 0
  for j = 1, #entry[2], 2 do if entry[2][j] == 'n' then n = tonumber(entry[2][j + 1]) end end
  redis.call('XDEL', KEYS[1], entry[1])
  redis.call('ZREM', KEYS[2], entry[1])
  total = redis.call('HINCRBY', KEYS[3], 'records', -n)
  redis.call('HINCRBY', KEYS[3], 'trimmed-' .. why, n)
  if holds_findings(entry) then
    findings = redis.call('HINCRBY', KEYS[3], 'findings', -n)
    redis.call('HINCRBY', KEYS[3], 'trimmed-' .. why .. '-findings', n)
  end
end
local function over(of_findings)
  if of_findings then return findings > max_records end
  return total - findings > max_records
end
local function trim(of_findings, cursor)
  if not over(of_findings) then return end
  local start = redis.call('HGET', KEYS[3], cursor) or '-'
  local more = true
  while more and budget > 0 and over(of_findings) do
    local batch = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 16)
    more = #batch > 0
    for _, entry in ipairs(batch) do
      if entry[1] == id then more = false; break end
      if budget <= 0 or not over(of_findings) then break end
      budget = budget - 1
      if holds_findings(entry) == of_findings then drop(entry, 'size') end
      start = '(' .. entry[1]
    end
  end
  redis.call('HSET', KEYS[3], cursor, start)
end
trim(false, 'head-p')
trim(true, 'head-f')
if now >= tonumber(redis.call('HGET', KEYS[3], 'age-check') or '0') then
  local due = now
  while true do
    local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
    if oldest == nil or oldest[1] == id then due = now + max_age; break end
    local born = tonumber(string.match(oldest[1], '^(%d+)-'))
    if born + max_age > now or budget <= 0 then due = born + max_age; break end
    budget = budget - 1
    drop(oldest, 'age')
  end
  redis.call('HSET', KEYS[3], 'age-check', string.format('%d', due))
end
return tonumber(ARGV[4])
""".replace("TRIM_PER_WRITE", str(TRIM_PER_WRITE))
    .replace("COUNT_LUA", stats.COUNT_LUA)
    .replace("TENS_LUA", stats.TENS_LUA),
    integer,
)


class Delivery:
    """Writes batches of records to Redis or, when it does not take them, to the spool; one lock serialises it."""

    def __init__(
        self,
        redis: RedisFacade,
        spool: Spool,
        gateway: str,
        max_records: int,
        max_age_s: float,
        retry_interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``max_records``, ``max_age_s``: the retention, per sandbox. ``retry_interval``: after a failure, writes
        go straight to the spool for this long. ``clock``: monotonic seconds (retries and log pacing)."""
        self.gateway = gateway
        self._redis = redis
        self._spool = spool
        self._max_records = max_records
        self._max_age_s = max_age_s
        self._retry_interval = retry_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._failing_logged_at: float | None = None
        """When the last "Redis failed" line was logged (None: Redis is not failing)."""
        self._lost_logged_at: float | None = None
        self._lost_logged = 0
        self._retry_at = 0.0
        self._known_sandboxes: set[str] = set()
        self.written = 0
        """Records stored in Redis."""
        self.duplicates = 0
        """Records Redis already had (a replay of a batch whose reply was lost)."""
        self.spooled = 0
        """Records put in the disk spool because Redis did not take them."""
        self.redis_errors = 0
        """Failed Redis round trips."""
        self.lost = 0
        """Records refused by a full spool or disk (logged once a minute): the only way a record is not kept."""

    @property
    def spool_pending(self) -> int:
        """Batches waiting in the spool."""
        with self._lock:
            return len(self._spool)

    def write(self, records: Sequence[AttemptRecord]) -> None:
        """Store ``records`` (stamped with this gateway's name when they carry none); never raises for Redis."""
        batch = [record if record.gateway else dataclasses.replace(record, gateway=self.gateway) for record in records]
        if not batch:
            return
        with self._lock:
            if self._clock() >= self._retry_at:
                if not self._spool.empty:
                    self._drain(DRAIN_PER_WRITE)
                if self._spool.empty and self._clock() >= self._retry_at:
                    try:
                        self._deliver(batch)
                        return
                    except STORE_ERRORS as error:
                        self._failed(error)
            self._to_spool(batch)

    def drain(self, max_batches: int | None = None, *, force: bool = False) -> int:
        """Deliver spooled batches, oldest first, until the spool is empty or Redis fails; return batches sent.

        Cheap when the spool is empty; within ``retry_interval`` of a failure it does not try (unless ``force``),
        so a loop may call it often."""
        with self._lock:
            if self._spool.empty or (not force and self._clock() < self._retry_at):
                return 0
            return self._drain(max_batches)

    def close(self) -> None:
        """Close the connection once a write in progress has ended."""
        with self._lock:
            self._redis.close()

    def _deliver(self, records: Sequence[AttemptRecord]) -> None:
        by_sandbox: dict[str, list[AttemptRecord]] = {}
        for record in records:
            by_sandbox.setdefault(record.sandbox, []).append(record)
        new_sandboxes = sorted(set(by_sandbox) - self._known_sandboxes)
        if new_sandboxes:
            self._redis.sadd(SANDBOXES_KEY, *new_sandboxes)
        added = sum(self._redis.run_each(WRITE_SCRIPT, self._entry_calls(by_sandbox)))
        if self._failing_logged_at is not None:
            self._failing_logged_at = None
            log.warning(
                "Redis at %s answers again (%d failed round trips so far)", shown(self._redis.url), self.redis_errors
            )
        self._known_sandboxes.update(new_sandboxes)
        self.written += added
        self.duplicates += len(records) - added

    def _entry_calls(self, by_sandbox: dict[str, list[AttemptRecord]]) -> Iterator[ScriptCall]:
        """The write script's keys and arguments for each entry, encoded as they are asked for."""
        max_age_ms = int(self._max_age_s * 1000)
        ttl = max(1, int(self._max_age_s))
        size = max(1, min(layout.CHUNK, self._max_records))
        for sandbox, group in by_sandbox.items():
            stream, index, state = stream_key(sandbox), index_key(sandbox), state_key(sandbox)
            for chunk in entry_chunks(group, size):
                keys = (stream, index, state, seen_key(sandbox, chunk[0].id))
                kind = "1" if is_finding(chunk[0]) else "0"
                args = (self._max_records, max_age_ms, ttl, len(chunk), repr(chunk[0].ts), encode_entry(chunk), kind)
                yield stats.with_counters(keys, args, sandbox, chunk, self._max_age_s)

    def _drain(self, max_batches: int | None) -> int:
        sent = 0
        for batch in self._spool.pending():
            if max_batches is not None and sent >= max_batches:
                break
            try:
                self._deliver(batch.records)
            except STORE_ERRORS as error:
                self._failed(error)
                break
            self._spool.commit(batch.seq)
            sent += 1
        if sent:
            log.info("delivered %d spooled record batches to Redis", sent)
        return sent

    def _to_spool(self, records: Sequence[AttemptRecord]) -> None:
        try:
            self._spool.append(records)
        except SpoolFull as full:
            if self._spool.empty or self._clock() < self._retry_at:
                self._lose(records, full)
                return
            try:  # Redis answers but the spool is still draining: out of order rather than lost
                self._deliver(records)
            except STORE_ERRORS as error:
                self._failed(error)
                self._lose(records, full)
            return
        self.spooled += len(records)

    def _lose(self, records: Sequence[AttemptRecord], why: SpoolFull) -> None:
        self.lost += len(records)
        now = self._clock()
        if self._lost_logged_at is None or now - self._lost_logged_at >= LOG_EVERY:
            log.error(
                "%s: %d records lost (%d so far; logged once a minute)", why, self.lost - self._lost_logged, self.lost
            )
            self._lost_logged_at, self._lost_logged = now, self.lost

    def _failed(self, error: BaseException) -> None:
        self.redis_errors += 1
        now = self._clock()
        self._retry_at = now + self._retry_interval
        if self._failing_logged_at is None or now - self._failing_logged_at >= LOG_EVERY:
            self._failing_logged_at = now
            log.warning(
                "Redis at %s failed (%s: %s): records go to the spool (%d failed round trips so far; logged once a "
                "minute)",
                shown(self._redis.url),
                type(error).__name__,
                error,
                self.redis_errors,
            )
