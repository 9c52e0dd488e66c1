"""The record store: writes attempt records to Redis (the only module that imports redis) and reads them back.

The key layout is `egress.record.layout`'s (docs/records.md): per sandbox, a stream of entries of up to
`layout.CHUNK` records each (the records as one JSON array), a time index of the entries (score = the time of an
entry's first record), a record count (for the size retention) and a short-lived "seen" key per entry, all under
the sandbox's hash tag so one Lua script writes them on a single server and on a Redis Cluster alike.

Delivery: `write` cuts a batch into entries and sends them in one pipeline, one script per entry that stores it
only if its seen key is new (a replay stores nothing twice) and applies the retention. On any Redis error (down,
timeout, cluster reshaping) the batch goes to the disk spool (`egress.record.spool`) and `drain` delivers spooled
batches in order once Redis answers. While the spool holds anything, new batches queue behind it, so the stream
stays in arrival order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import redis
import redis.cluster
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from egress.record import layout, walk
from egress.record.layout import (
    SANDBOXES_KEY,
    encode_entry,
    entry_chunks,
    index_key,
    seen_key,
    state_key,
    stream_key,
)
from egress.record.schema import AttemptRecord
from egress.record.spool import Spool, SpoolFull

log = logging.getLogger(__name__)

COUNTERS_PREFIX: Final = "egress:{metrics}:"
"""Hashes of the gateway components' counters (one slot on a Cluster, thanks to the hash tag)."""
COUNTERS_INDEX: Final = "egress:{metrics}:index"
DRAIN_PER_WRITE: Final = 64
"""Spooled batches a `write` delivers before returning (a background `drain` does the rest)."""
TRIM_PER_WRITE: Final = 1_000
"""Old entries one write drops at most (the next writes go on)."""

_REDIS_ERRORS: Final = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError)
STORE_ERRORS: Final[tuple[type[BaseException], ...]] = _REDIS_ERRORS
"""What a query may raise when Redis does not answer or refuses: callers catch these without importing redis."""

# KEYS: stream, index, state hash, seen key of the entry. ARGV: max records, max age (ms), seen ttl (s), number of
# records n, time of the first record, the records (one JSON array). Stores the entry unless its seen key exists;
# then, when the stream holds more than the max records or its oldest entry may have outlived the max age (Redis's
# clock: stream ids), drops the oldest entries (by arrival) until neither holds, never the entry just written, and
# notes when the oldest left will be due, so most writes do not look at it. Returns n when stored, 0 for a replay.
_WRITE_SCRIPT: Final = """
if not redis.call('SET', KEYS[4], '1', 'NX', 'EX', ARGV[3]) then return 0 end
local id = redis.call('XADD', KEYS[1], '*', 'n', ARGV[4], 'records', ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[5], id)
local total = redis.call('HINCRBY', KEYS[3], 'records', ARGV[4])
local now = tonumber(string.match(id, '^(%d+)-'))
local max_records, max_age = tonumber(ARGV[1]), tonumber(ARGV[2])
if total > max_records or now >= tonumber(redis.call('HGET', KEYS[3], 'age-check') or '0') then
  local due = now
  for _ = 1, TRIM_PER_WRITE do
    local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
    if oldest == nil or oldest[1] == id then due = now + max_age; break end
    local born = tonumber(string.match(oldest[1], '^(%d+)-'))
    if total <= max_records and born + max_age > now then due = born + max_age; break end
    local n, fields = 0, oldest[2]
    for j = 1, #fields, 2 do
      if fields[j] == 'n' then n = tonumber(fields[j + 1]) end
    end
    redis.call('XDEL', KEYS[1], oldest[1])
    redis.call('ZREM', KEYS[2], oldest[1])
    total = redis.call('HINCRBY', KEYS[3], 'records', -n)
  end
  redis.call('HSET', KEYS[3], 'age-check', string.format('%d', due))
end
return tonumber(ARGV[4])
""".replace("TRIM_PER_WRITE", str(TRIM_PER_WRITE))
_WRITE_SHA: Final = hashlib.sha1(_WRITE_SCRIPT.encode()).hexdigest()


class RecordStore:
    """Writes and reads attempt records; safe to share between threads (one lock serialises writes)."""

    def __init__(
        self,
        url: str,
        spool_dir: Path,
        gateway: str,
        retention_max_len: int = 1_000_000,
        retention_max_age_days: float = 30,
        *,
        cluster: bool | None = None,
        socket_timeout: float = 2.0,
        connect_timeout: float = 1.0,
        retry_interval: float = 1.0,
        spool_max_bytes: int = 256 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``url``: ``redis://host:port/db``; ``redis+cluster://host:port`` (or ``cluster=True``) for a Redis
        Cluster. ``retry_interval``: after a failure, writes go straight to the spool for this long."""
        scheme, _, rest = url.partition("://")
        if scheme in {"redis+cluster", "rediss+cluster"}:
            cluster = True if cluster is None else cluster
            url = f"{scheme.removesuffix('+cluster')}://{rest}"
        self.url = url
        self.cluster = bool(cluster)
        self.gateway = gateway
        self.retention_max_len = retention_max_len
        self.retention_max_age = retention_max_age_days * 86400.0
        self._socket_timeout = socket_timeout
        self._connect_timeout = connect_timeout
        self._retry_interval = retry_interval
        self._clock = clock
        self._spool = Spool(spool_dir, spool_max_bytes)
        self._lock = threading.Lock()
        self._connect_lock = threading.Lock()
        self._client: Any = None
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
        """Records refused by a full spool (logged as errors): the only way a record is not kept."""

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
            if self._spool.empty and time.monotonic() >= self._retry_at:
                try:
                    self._deliver(batch)
                    return
                except _REDIS_ERRORS as error:
                    self._failed(error)
            self._to_spool(batch)
            if time.monotonic() >= self._retry_at:
                self._drain(DRAIN_PER_WRITE)

    def drain(self, max_batches: int | None = None, *, force: bool = False) -> int:
        """Deliver spooled batches, oldest first, until the spool is empty or Redis fails; return batches sent.

        Cheap when the spool is empty; within ``retry_interval`` of a failure it does not try (unless ``force``),
        so a loop may call it often."""
        with self._lock:
            if self._spool.empty or (not force and time.monotonic() < self._retry_at):
                return 0
            return self._drain(max_batches)

    def read(
        self,
        sandbox: str,
        start_ts: float | None = None,
        end_ts: float | None = None,
        count: int = 100,
        cursor: str | None = None,
        *,
        reverse: bool = False,
    ) -> tuple[list[AttemptRecord], str | None]:
        """Records of ``sandbox`` with ``start_ts <= ts <= end_ts`` in (ts, id) order (newest first with
        ``reverse``), at most ``count``; pass the returned cursor back to get the next page (``None``: no more).
        Redis errors propagate (queries are not spooled); a malformed cursor is a `ValueError`."""
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        after: tuple[float, str] | None = None
        if cursor is not None:
            score_text, separator, record_id = cursor.partition(":")
            try:
                after = (float(score_text), record_id)
            except ValueError:
                raise ValueError(f"malformed cursor {cursor!r}") from None
            if not separator or not record_id:
                raise ValueError(f"malformed cursor {cursor!r}")
        low = float("-inf") if start_ts is None else start_ts
        high = float("inf") if end_ts is None else end_ts
        records = walk.records_by_time(self._connect(), sandbox, low, high, descending=reverse, after=after)
        page = list(itertools.islice(records, count + 1))
        more = len(page) > count
        page = page[:count]
        return page, f"{page[-1].ts!r}:{page[-1].id}" if more else None

    def sandboxes(self) -> list[str]:
        """Names of the sandboxes that have records, sorted."""
        return sorted(self._connect().smembers(SANDBOXES_KEY))

    def ping(self) -> bool:
        """Whether Redis answers now."""
        try:
            return bool(self._connect().ping())
        except _REDIS_ERRORS:
            return False

    def client(self) -> Any:
        """The redis-py client (``redis.Redis`` or ``redis.cluster.RedisCluster``, replies decoded to str) for the
        read helpers of `egress.record.query`, which must not import redis themselves. Thread-safe like redis-py."""
        return self._connect()

    def now(self) -> float:
        """The store's clock (epoch seconds): what retention is measured against."""
        return self._clock()

    @property
    def socket_timeout(self) -> float:
        """Seconds a Redis reply may take; a blocking read must wait less than this."""
        return self._socket_timeout

    def add_counters(self, component: str, deltas: dict[str, int]) -> None:
        """Add ``deltas`` to a component's counters (the gateway's metrics, read by the API's /metrics).

        Raises one of `STORE_ERRORS` when Redis is unreachable; the caller keeps the deltas and retries.
        """
        if not deltas:
            return
        key = f"{COUNTERS_PREFIX}{component}"
        pipe = self.client().pipeline(transaction=False)
        for field, delta in deltas.items():
            pipe.hincrby(key, field, delta)
        pipe.sadd(COUNTERS_INDEX, key)
        pipe.execute()

    def read_counters(self) -> dict[str, dict[str, int]]:
        """Every component's counters: {component: {field: value}}."""
        client = self.client()
        found: dict[str, dict[str, int]] = {}
        for raw in client.smembers(COUNTERS_INDEX):
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            values = client.hgetall(key)
            component = key.removeprefix(COUNTERS_PREFIX)
            found[component] = {(k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in values.items()}
        return found

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _connect(self) -> Any:
        with self._connect_lock:  # reads from several threads (the API) share one client
            if self._client is None:
                self._client = self._new_client()
            return self._client

    def _new_client(self) -> Any:
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_timeout": self._socket_timeout,
            "socket_connect_timeout": self._connect_timeout,
            "retry": Retry(NoBackoff(), 0),  # a failed write is spooled, not retried in place
        }
        if self.cluster:
            return redis.cluster.RedisCluster.from_url(self.url, **options)
        return redis.Redis.from_url(self.url, **options)

    def _deliver(self, records: Sequence[AttemptRecord]) -> None:
        client = self._connect()
        by_sandbox: dict[str, list[AttemptRecord]] = {}
        for record in records:
            by_sandbox.setdefault(record.sandbox, []).append(record)
        new_sandboxes = sorted(set(by_sandbox) - self._known_sandboxes)
        prelude = [("SADD", SANDBOXES_KEY, *new_sandboxes)] if new_sandboxes else []
        send = self._send_pipelined if self.cluster else self._send_streamed
        calls, replies = send(client, prelude, self._entry_calls(by_sandbox))
        added = 0
        unknown = []  # the server does not have the script yet (new, restarted, or another Cluster node): EVAL
        for reply in replies[: len(prelude)]:
            if isinstance(reply, BaseException):
                raise reply
        for call, reply in zip(calls, replies[len(prelude) :], strict=True):
            if isinstance(reply, redis.exceptions.NoScriptError):
                unknown.append(call)
            elif isinstance(reply, BaseException):
                raise reply
            else:
                added += int(reply)
        if unknown:
            pipe = client.pipeline(transaction=False)
            for call in unknown:
                pipe.execute_command("EVAL", _WRITE_SCRIPT, *call)
            added += sum(int(reply) for reply in pipe.execute())
        self._known_sandboxes.update(new_sandboxes)
        self.written += added
        self.duplicates += len(records) - added

    def _entry_calls(self, by_sandbox: dict[str, list[AttemptRecord]]) -> Iterator[tuple[Any, ...]]:
        """The write script's arguments (after the script) for each entry, encoded as they are asked for."""
        max_age_ms = int(self.retention_max_age * 1000)
        ttl = max(1, int(self.retention_max_age))
        size = max(1, min(layout.CHUNK, self.retention_max_len))
        for sandbox, group in by_sandbox.items():
            stream, index, state = stream_key(sandbox), index_key(sandbox), state_key(sandbox)
            for chunk in entry_chunks(group, size):
                keys = (stream, index, state, seen_key(sandbox, chunk[0].id))
                args = (self.retention_max_len, max_age_ms, ttl, len(chunk), repr(chunk[0].ts), encode_entry(chunk))
                yield (4, *keys, *args)

    @staticmethod
    def _send_streamed(
        client: Any, prelude: list[tuple[Any, ...]], calls: Iterator[tuple[Any, ...]]
    ) -> tuple[list[tuple[Any, ...]], list[Any]]:
        """Single server: send each command as soon as it is encoded, so Redis stores one entry while the next is
        being encoded, then read every reply (an error reply comes back as its exception)."""
        pool = client.connection_pool
        connection = pool.get_connection()
        sent: list[tuple[Any, ...]] = []
        try:
            for command in prelude:
                connection.send_command(*command)
            for call in calls:
                connection.send_command("EVALSHA", _WRITE_SHA, *call)
                sent.append(call)
            replies: list[Any] = []
            for _ in range(len(prelude) + len(sent)):
                try:
                    replies.append(connection.read_response())
                except redis.exceptions.ResponseError as error:
                    replies.append(error)
        except BaseException:
            connection.disconnect()  # replies may still be on their way: this connection cannot be reused
            raise
        finally:
            pool.release(connection)
        return sent, replies

    @staticmethod
    def _send_pipelined(
        client: Any, prelude: list[tuple[Any, ...]], calls: Iterator[tuple[Any, ...]]
    ) -> tuple[list[tuple[Any, ...]], list[Any]]:
        """Redis Cluster: one pipeline (redis-py sends each node its commands)."""
        pipe = client.pipeline(transaction=False)
        for command in prelude:
            pipe.execute_command(*command)
        sent = list(calls)
        for call in sent:
            pipe.execute_command("EVALSHA", _WRITE_SHA, *call)  # ClusterPipeline.evalsha is not EVALSHA
        return sent, pipe.execute(raise_on_error=False)

    def _drain(self, max_batches: int | None) -> int:
        sent = 0
        for batch in self._spool.pending():
            if max_batches is not None and sent >= max_batches:
                break
            try:
                self._deliver(batch.records)
            except _REDIS_ERRORS as error:
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
        except SpoolFull:
            self.lost += len(records)  # the spool logged it as an error
            return
        self.spooled += len(records)

    def _failed(self, error: BaseException) -> None:
        self.redis_errors += 1
        self._retry_at = time.monotonic() + self._retry_interval
        log.warning("Redis at %s failed (%s: %s): records go to the spool", self.url, type(error).__name__, error)
