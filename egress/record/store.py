"""The record store: writes attempt records to Redis (the only module that imports redis) and reads them back.

Key layout (every key of a sandbox shares the hash tag ``{<sandbox>}``, so one Lua script may touch them all on a
Redis Cluster):

- ``egress:{<sandbox>}:attempts``: a stream, one entry per record (`AttemptRecord.to_fields`), ids in arrival
  order; what consumers and live followers read. Trimmed to ``retention_max_len`` (``MAXLEN ~``) and by age
  (``MINID ~``).
- ``egress:{<sandbox>}:by-time``: a sorted set, member = stream id, score = the record's ``ts``; what time-range
  queries read (a record delivered late from the spool still sorts by when it happened). Trimmed exactly.
- ``egress:{<sandbox>}:seen:<record id>``: set once per record with an expiry, so a batch replayed after a
  timeout (it may have been applied) is never stored twice.
- ``egress:sandboxes``: a set of the sandbox names that have records.

Delivery: `write` sends a batch in one pipeline; on any Redis error (down, timeout, cluster reshaping) the batch
goes to the disk spool (`egress.record.spool`) and `drain` delivers spooled batches in order once Redis answers.
While the spool holds anything, new batches queue behind it, so the stream stays in order.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import operator
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import redis
import redis.cluster
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from egress.record.schema import AttemptRecord
from egress.record.spool import Spool, SpoolFull

log = logging.getLogger(__name__)

SANDBOXES_KEY: Final = "egress:sandboxes"
COUNTERS_PREFIX: Final = "egress:{metrics}:"
"""Hashes of the gateway components' counters (one slot on a Cluster, thanks to the hash tag)."""
COUNTERS_INDEX: Final = "egress:{metrics}:index"
CHUNK: Final = 256
"""Records per script call: bounds the size of one atomic step on the server."""
DRAIN_PER_WRITE: Final = 64
"""Spooled batches a `write` delivers before returning (a background `drain` does the rest)."""

_FIELD_NAMES: Final = tuple(field.name for field in dataclasses.fields(AttemptRecord))

_REDIS_ERRORS: Final = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError)
STORE_ERRORS: Final[tuple[type[BaseException], ...]] = _REDIS_ERRORS
"""What a query may raise when Redis does not answer or refuses: callers catch these without importing redis."""

# KEYS: stream, index, then one seen-key per record. ARGV: maxlen, max age (ms), min score, seen ttl (s), number
# of fields n, the n field names, then the records as one JSON array of arrays of their n values (strings): one
# argument decoded in C by cjson keeps both the client's packing and the script's parsing cheap. Returns how many
# records were new. The stream is trimmed by age relative to its newest id (Redis's clock), the index by the
# records' times.
_WRITE_SCRIPT: Final = """
local maxlen = ARGV[1]
local n = tonumber(ARGV[5])
local ts_at = 0
local fields = {}
for j = 1, n do
  if ARGV[5 + j] == 'ts' then ts_at = j end
  fields[2 * j - 1] = ARGV[5 + j]
end
local rows = cjson.decode(ARGV[6 + n])
local added = 0
local last = nil
for i = 3, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[4]) then
    local values = rows[i - 2]
    for j = 1, n do
      fields[2 * j] = values[j]
    end
    last = redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', unpack(fields))
    redis.call('ZADD', KEYS[2], values[ts_at], last)
    added = added + 1
  end
end
if last then
  local newest = tonumber(string.match(last, '^(%d+)-'))
  if newest > tonumber(ARGV[2]) then
    redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%d', newest - tonumber(ARGV[2])))
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[3])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -(tonumber(maxlen) + 1))
return added
"""


def sandbox_tag(sandbox: str) -> str:
    """The sandbox name as it appears inside keys: escaped so that it cannot end the hash tag early."""
    return urllib.parse.quote(sandbox, safe="._-~") or "%"  # "%" alone: no escaped name is that


def stream_key(sandbox: str) -> str:
    return f"egress:{{{sandbox_tag(sandbox)}}}:attempts"


def index_key(sandbox: str) -> str:
    return f"egress:{{{sandbox_tag(sandbox)}}}:by-time"


def seen_key(sandbox: str, record_id: str) -> str:
    return f"egress:{{{sandbox_tag(sandbox)}}}:seen:{record_id}"


def action_keys(sandbox: str) -> tuple[str, str, str, str]:
    """The agent-action keys of a sandbox (docs/records.md): hash id -> JSON, sorted sets by start and by end
    (``inf`` while running), and the longest finished span seen (what bounds an overlap query)."""
    prefix = f"egress:{{{sandbox_tag(sandbox)}}}"
    return f"{prefix}:actions", f"{prefix}:actions-by-start", f"{prefix}:actions-by-end", f"{prefix}:actions-span"


_GET_VALUES: Final = operator.attrgetter(*_FIELD_NAMES)


def _pack(records: Sequence[AttemptRecord]) -> str:
    """The records' values in `_FIELD_NAMES` order as a JSON array of arrays of strings (what the script decodes);
    each value as `AttemptRecord.to_fields` writes it."""
    rows = [[repr(value) if type(value) is float else str(value) for value in _GET_VALUES(r)] for r in records]
    return json.dumps(rows, ensure_ascii=False, separators=(",", ":"))


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
        """Records of ``sandbox`` with ``start_ts <= ts <= end_ts`` in time order (newest first with
        ``reverse``), at most ``count``; pass the returned cursor back to get the next page (``None``: no more).
        Redis errors propagate (queries are not spooled); a malformed cursor is a `ValueError`."""
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        client = self._connect()
        index = index_key(sandbox)
        low: float | str = "-inf" if start_ts is None else start_ts
        high: float | str = "+inf" if end_ts is None else end_ts
        skip = 0
        if cursor is not None:
            score_text, separator, member = cursor.partition(":")
            try:
                score = float(score_text)
            except ValueError:
                raise ValueError(f"malformed cursor {cursor!r}") from None
            if not separator or not member:
                raise ValueError(f"malformed cursor {cursor!r}")
            if reverse:
                high = score
            else:
                low = score
            # Members with the cursor's exact score sort by member; skip those already returned.
            ties = client.zrange(index, score, score, byscore=True)
            skip = sum(1 for tie in ties if (tie >= member if reverse else tie <= member))
        if reverse:
            members = client.zrange(index, high, low, desc=True, byscore=True, offset=skip, num=count, withscores=True)
        else:
            members = client.zrange(index, low, high, byscore=True, offset=skip, num=count, withscores=True)
        if not members:
            return [], None
        pipe = client.pipeline(transaction=False)
        stream = stream_key(sandbox)
        for member, _ in members:
            pipe.xrange(stream, member, member)
        records = []
        for reply in pipe.execute():
            if reply:  # empty: trimmed from the stream since (the index is trimmed on the next write)
                _, fields = reply[0]
                records.append(AttemptRecord.from_fields(fields))
        last_member, last_score = members[-1]
        next_cursor = f"{float(last_score)!r}:{last_member}" if len(members) == count else None
        return records, next_cursor

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
        now = self._clock()
        min_score = now - self.retention_max_age
        max_age_ms = int(self.retention_max_age * 1000)
        ttl = max(1, int(self.retention_max_age))
        by_sandbox: dict[str, list[AttemptRecord]] = {}
        for record in records:
            by_sandbox.setdefault(record.sandbox, []).append(record)
        pipe = client.pipeline(transaction=False)
        new_sandboxes = sorted(set(by_sandbox) - self._known_sandboxes)
        if new_sandboxes:
            pipe.sadd(SANDBOXES_KEY, *new_sandboxes)
        calls = 0
        for sandbox, group in by_sandbox.items():
            for start in range(0, len(group), CHUNK):
                chunk = group[start : start + CHUNK]
                keys = [stream_key(sandbox), index_key(sandbox), *(seen_key(sandbox, r.id) for r in chunk)]
                args: list[str | int | bytes] = [
                    self.retention_max_len,
                    max_age_ms,
                    repr(min_score),
                    ttl,
                    len(_FIELD_NAMES),
                    *_FIELD_NAMES,
                ]
                args.append(_pack(chunk))
                pipe.execute_command("EVAL", _WRITE_SCRIPT, len(keys), *keys, *args)  # ClusterPipeline.eval is not EVAL
                calls += 1
        replies = pipe.execute()
        added = sum(int(reply) for reply in replies[len(replies) - calls :])
        self._known_sandboxes.update(new_sandboxes)
        self.written += added
        self.duplicates += len(records) - added

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
