"""The record store's Redis, behind one typed facade: the only module that imports redis.

redis-py leaves some calls untyped (``execute_command``, the connection's ``send_command``, the Cluster's
``pipeline``); they are called here only, and every reply is checked into a type before it leaves.

`RedisFacade` has a method for each command the record code sends (and a ``*_each`` form that sends one command
per argument in one round trip), and checks each reply into the type it promises (str, int, float, lists of
tuples), so the callers (`delivery`, `walk`, `query`, `action_store`, `counters`) are type-checked against it and
never see redis-py. Lua scripts are `Script` values: sent by EVALSHA, and by EVAL only when the server does not
know them yet. The same calls work on a single server and on a Redis Cluster (``redis+cluster://``): every call
that names several keys names keys of one hash slot, and redis-py routes each to its node.

Errors: Redis being down, slow or refusing raises one of `STORE_ERRORS`; a reply of a shape this module does not
expect raises `UnexpectedReply` (one of them too).

Eviction: every connection, the first and each reconnect (to every node of a Cluster), first asks the server's
``maxmemory-policy`` (``INFO memory``) and refuses a server that may evict keys (`EvictingRedis`, one of
`STORE_ERRORS`: a write is spooled, not stored where a flood could push earlier records out). Only
``noeviction`` is accepted: the ``volatile-*`` policies evict keys with a TTL, and the record keys' counter hashes,
dedupe marks and quarantine windows have one (docs/records.md, "Redis settings").
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

import redis
import redis.cluster
import redis.connection
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.typing import KeyT, StreamIdT

StreamEntry = tuple[str, dict[str, str]]
"""A stream entry: its id and its fields."""
Arg = str | bytes | int | float
ScriptCall = tuple[Sequence[str], Sequence[Arg]]
"""A script's keys and arguments."""


_TOPOLOGY_ERRORS = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.MovedError,
    redis.exceptions.TryAgainError,
)
"""Errors after which a Cluster's slot map may be out of date (a master failed over)."""


class UnexpectedReply(redis.exceptions.RedisError):
    """A reply of another shape than the command's (a server or protocol this code does not know)."""


STORE_ERRORS: Final[tuple[type[BaseException], ...]] = (
    redis.exceptions.RedisError,
    redis.exceptions.RedisClusterException,
    OSError,
)
"""What a call may raise when Redis does not answer or refuses: callers catch these without importing redis."""


ACCEPTED_POLICY: Final = "noeviction"


class EvictingRedis(redis.exceptions.ConnectionError):
    """The server's ``maxmemory-policy`` may evict keys (or could not be read): records are not stored there."""


def eviction_problem(info: object) -> str | None:
    """What is wrong with a server whose ``INFO memory`` reply is ``info``: ``None`` when it cannot evict keys."""
    policy = ""
    for line in text(info).splitlines():
        name, _, value = line.partition(":")
        if name == "maxmemory_policy":
            policy = value.strip()
    if policy == ACCEPTED_POLICY:
        return None
    return (
        f"Redis maxmemory-policy is {policy or 'not reported'!r}: a flood could evict earlier records; "
        f"set maxmemory-policy {ACCEPTED_POLICY} (redis.conf, or CONFIG SET maxmemory-policy {ACCEPTED_POLICY})"
    )


def check_eviction(connection: redis.connection.AbstractConnection) -> None:
    """Refuse a new connection to a server that may evict keys (`EvictingRedis`)."""
    try:
        connection.send_command("INFO", "memory")  # type: ignore[no-untyped-call]
        reply = connection.read_response()
    except redis.exceptions.ResponseError as exc:
        raise EvictingRedis(f"Redis maxmemory-policy could not be read (INFO memory: {exc})") from exc
    problem = eviction_problem(reply)
    if problem is not None:
        raise EvictingRedis(problem)


def _connect_and_check(connection: redis.connection.AbstractConnection) -> None:
    connection.on_connect()  # type: ignore[no-untyped-call]  # what redis-py does when no connect function is given
    check_eviction(connection)


def text(value: object) -> str:
    """A reply that is a string (redis-py decodes replies to str)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode()
    raise UnexpectedReply(f"expected a string, got {value!r:.80}")


def integer(value: object) -> int:
    """A reply that is an integer."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise UnexpectedReply(f"expected an integer, got {value!r:.80}")


def optional_text(value: object) -> str | None:
    """A string or nil (a script's ``false``)."""
    return None if value is None else text(value)


def optional_texts(value: object) -> list[str | None]:
    """An array of strings and nils (HMGET)."""
    return [optional_text(item) for item in _array(value)]


def _array(value: object) -> list[object]:
    if isinstance(value, list | tuple):
        return list(value)
    raise UnexpectedReply(f"expected an array, got {value!r:.80}")


def _entries(value: object) -> list[StreamEntry]:
    """XRANGE/XREAD entries: (id, fields); a deleted entry's fields are None in redis-py (here: empty)."""
    entries = []
    for item in _array(value):
        entry_id, fields = _array(item)
        pairs = {} if fields is None else fields
        if not isinstance(pairs, dict):
            raise UnexpectedReply(f"expected the fields of a stream entry, got {pairs!r:.80}")
        entries.append((text(entry_id), {text(key): text(val) for key, val in pairs.items()}))
    return entries


def _scored(value: object) -> list[tuple[str, float]]:
    """ZRANGE ... WITHSCORES: (member, score) pairs."""
    pairs = []
    for item in _array(value):
        member, score = _array(item)
        if not isinstance(score, int | float | str) or isinstance(score, bool):
            raise UnexpectedReply(f"expected a score, got {score!r:.80}")
        pairs.append((text(member), float(score)))
    return pairs


def _streams(value: object) -> list[tuple[str, list[StreamEntry]]]:
    """An XREAD reply: (stream, entries) per stream that had entries; nil when none had."""
    if value is None:
        return []
    pairs = value.items() if isinstance(value, dict) else (_array(item) for item in _array(value))
    return [(text(stream), _entries(entries)) for stream, entries in pairs]


@dataclass(frozen=True, slots=True)
class Script[T]:
    """A Lua script and how to read its reply (one of the converters above)."""

    source: str
    reply: Callable[[object], T]
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


_Client = redis.Redis | redis.cluster.RedisCluster


class RedisFacade:
    """One Redis server or Cluster, connected on first use; safe to share between threads (like redis-py)."""

    def __init__(
        self, url: str, *, cluster: bool = False, socket_timeout: float = 2.0, connect_timeout: float = 1.0
    ) -> None:
        """``url``: ``redis://host:port/db`` (``cluster``: a node of the Cluster). A failed call is not retried
        in place: the record code spools or reports it."""
        self.url = url
        self.cluster = cluster
        self.socket_timeout = socket_timeout
        """Seconds a reply may take; a blocking read must wait less than this."""
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._client: _Client | None = None
        self._stale = False
        """A Cluster call failed as if a node were gone: the slot map is read again before the next call."""

    @classmethod
    def from_url(
        cls, url: str, *, cluster: bool | None = None, socket_timeout: float = 2.0, connect_timeout: float = 1.0
    ) -> RedisFacade:
        """``redis://host:port/db``, or ``redis+cluster://host:port`` for a node of a Cluster (``cluster``, when
        given, decides instead of the scheme)."""
        scheme, _, rest = url.partition("://")
        if scheme in {"redis+cluster", "rediss+cluster"}:
            cluster = True if cluster is None else cluster
            url = f"{scheme.removesuffix('+cluster')}://{rest}"
        return cls(url, cluster=bool(cluster), socket_timeout=socket_timeout, connect_timeout=connect_timeout)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def ping(self) -> bool:
        return bool(self._connect().ping())

    def sadd(self, key: str, *members: str) -> int:
        return integer(self._connect().sadd(key, *members))

    def smembers(self, key: str) -> set[str]:
        reply = self._connect().smembers(key)
        if not isinstance(reply, set):
            raise UnexpectedReply(f"expected a set, got {reply!r:.80}")
        return {text(member) for member in reply}

    def hgetall(self, key: str) -> dict[str, str]:
        reply = self._connect().hgetall(key)
        if not isinstance(reply, dict):
            raise UnexpectedReply(f"expected a hash, got {reply!r:.80}")
        return {text(name): text(value) for name, value in reply.items()}

    def hgetall_each(self, keys: Sequence[str]) -> list[dict[str, str]]:
        """HGETALL of each key, one round trip ({} for a key that does not exist)."""
        if not keys:
            return []
        pipe = self._connect().pipeline(transaction=False)
        for key in keys:
            pipe.hgetall(key)
        replies = []
        for reply in pipe.execute():
            if not isinstance(reply, dict):
                raise UnexpectedReply(f"expected a hash, got {reply!r:.80}")
            replies.append({text(name): text(value) for name, value in reply.items()})
        return replies

    def hincrby_each(self, key: str, deltas: Mapping[str, int]) -> list[int]:
        """HINCRBY of each field, one round trip: the new values."""
        pipe = self._connect().pipeline(transaction=False)
        for name, delta in deltas.items():
            pipe.hincrby(key, name, delta)
        return [integer(reply) for reply in pipe.execute()]

    def zrange_by_score(
        self, key: str, low: str, high: str, offset: int, count: int, *, descending: bool = False
    ) -> list[str]:
        """Members with ``low <= score <= high`` (bounds as Redis takes them: ``-inf``, ``(1.5``), ascending or
        descending, from ``offset``, at most ``count``."""
        start, end = (high, low) if descending else (low, high)
        reply = self._connect().zrange(key, start, end, desc=descending, byscore=True, offset=offset, num=count)
        return [text(member) for member in _array(reply)]

    def zrange_by_score_with_scores(
        self, key: str, low: str, high: str, offset: int, count: int, *, descending: bool = False
    ) -> list[tuple[str, float]]:
        """`zrange_by_score` with each member's score."""
        start, end = (high, low) if descending else (low, high)
        client = self._connect()
        reply = client.zrange(key, start, end, desc=descending, byscore=True, offset=offset, num=count, withscores=True)
        return _scored(reply)

    def xrange_each(self, stream: str, entry_ids: Sequence[str]) -> list[StreamEntry | None]:
        """The entries with these ids (XRANGE id id each), one round trip; None for an entry that is gone."""
        if not entry_ids:
            return []
        pipe = self._connect().pipeline(transaction=False)
        for entry_id in entry_ids:
            pipe.xrange(stream, entry_id, entry_id)
        return [next(iter(_entries(reply)), None) for reply in pipe.execute()]

    def last_ids(self, streams: Sequence[str]) -> list[str | None]:
        """The id of each stream's newest entry (XREVRANGE + - COUNT 1 each), one round trip; None when empty."""
        if not streams:
            return []
        pipe = self._connect().pipeline(transaction=False)
        for stream in streams:
            pipe.xrevrange(stream, count=1)
        return [next((entry_id for entry_id, _ in _entries(reply)), None) for reply in pipe.execute()]

    def time_ms(self) -> int:
        """The server's clock (TIME) in milliseconds, the clock its stream ids come from. On a Cluster, the
        earliest of its nodes' clocks (redis-py asks every primary and answers them by node)."""
        reply: object = self._connect().time()
        clocks = list(reply.values()) if isinstance(reply, dict) else [reply]
        found = []
        for clock in clocks:
            if not (isinstance(clock, list | tuple) and len(clock) == 2):
                raise UnexpectedReply(f"TIME answered {clock!r}")
            found.append(int(clock[0]) * 1000 + int(clock[1]) // 1000)
        if not found:
            raise UnexpectedReply("TIME answered no clock")
        return min(found)

    def xread(self, after: Mapping[str, str], count: int, block_ms: int) -> list[tuple[str, list[StreamEntry]]]:
        """XREAD of the streams after their ids, waiting up to ``block_ms`` (0: not at all) for an entry: (stream,
        entries) of those that have some. A single server only: on a Cluster the streams live on several nodes
        (use `xread_each`). ``block_ms`` must stay below `socket_timeout`."""
        streams: dict[KeyT, StreamIdT] = {stream: position for stream, position in after.items()}
        return _streams(self._connect().xread(streams, count=count, block=block_ms or None))

    def xread_each(self, after: Mapping[str, str], count: int) -> list[list[StreamEntry]]:
        """XREAD of each stream after its id without waiting, one round trip (any node of a Cluster)."""
        if not after:
            return []
        pipe = self._connect().pipeline(transaction=False)
        for stream, position in after.items():
            pipe.xread({stream: position}, count=count)
        return [next((entries for _, entries in _streams(reply)), []) for reply in pipe.execute()]

    def run[T](self, script: Script[T], keys: Sequence[str], args: Sequence[Arg]) -> T:
        """Run ``script`` once (EVALSHA; EVAL when the server does not know it yet)."""
        client = self._connect()
        try:
            reply = client.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)  # type: ignore[no-untyped-call]
        except redis.exceptions.NoScriptError:
            reply = client.execute_command("EVAL", script.source, len(keys), *keys, *args)  # type: ignore[no-untyped-call]
        return script.reply(reply)

    def run_each[T](self, script: Script[T], calls: Iterable[ScriptCall]) -> list[T]:
        """Run ``script`` once per call, in order, in one round trip, and read every reply; then raise the first
        error reply, if any. ``calls`` is consumed as it is sent: on a single server each call goes out on one
        connection as soon as it is made, so Redis runs one while the caller makes the next (a Cluster gets one
        pipeline, split per node by redis-py)."""
        client = self._connect()
        if isinstance(client, redis.cluster.RedisCluster):
            try:
                sent, replies = _pipelined(client, script, calls)
            except _TOPOLOGY_ERRORS:
                self._stale = True  # a node is gone (failover): learn the slots again before the next call
                raise
            if any(isinstance(reply, _TOPOLOGY_ERRORS) for reply in replies):
                self._stale = True
        else:
            sent, replies = _streamed(client, script, calls)
        unknown = [index for index, reply in enumerate(replies) if isinstance(reply, redis.exceptions.NoScriptError)]
        for reply in replies:
            if isinstance(reply, BaseException) and not isinstance(reply, redis.exceptions.NoScriptError):
                raise reply
        if unknown:  # a new or restarted server, or another Cluster node: send the source once there
            pipe = client.pipeline(transaction=False)
            for index in unknown:
                keys, args = sent[index]
                pipe.execute_command("EVAL", script.source, len(keys), *keys, *args)
            for index, reply in zip(unknown, pipe.execute(), strict=True):
                replies[index] = reply
        return [script.reply(reply) for reply in replies]

    def _connect(self) -> _Client:
        with self._lock:  # readers in several threads (the API) share one client
            if self._stale and isinstance(self._client, redis.cluster.RedisCluster):
                # After a node failed, redis-py (retries off) would keep sending its slots to the dead master:
                # ask the known nodes (every node seen, not only the URL's) who serves which slots now.
                self._client.nodes_manager.initialize()
                self._stale = False
            if self._client is None:
                retry = Retry(NoBackoff(), 0)  # a failed write is spooled, not retried in place
                timeouts = {"socket_timeout": self.socket_timeout, "socket_connect_timeout": self._connect_timeout}
                if self.cluster:  # the Cluster's own connect function calls ours after its handshake
                    self._client = redis.cluster.RedisCluster.from_url(
                        self.url, decode_responses=True, retry=retry, redis_connect_func=check_eviction, **timeouts
                    )
                else:
                    self._client = redis.Redis.from_url(
                        self.url, decode_responses=True, retry=retry, redis_connect_func=_connect_and_check, **timeouts
                    )
            return self._client


SEND_CHUNK: Final = 64 * 1024
"""Bytes of packed calls `RedisFacade.run_each` gathers before it sends them (on a single server)."""


def pack_command(args: Sequence[Arg]) -> bytes:
    """A command in the Redis protocol, as redis-py's ``Connection.pack_command`` makes it (an int or a float as
    its ``repr``, text as UTF-8). redis-py's packer grows one buffer argument by argument, copying it each time: a
    script that names a few hundred keys (a stats window) took longer to pack than to run."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int | float) and not isinstance(arg, bool):
            data = repr(arg).encode()
        else:
            raise redis.exceptions.DataError(f"cannot send a {type(arg).__name__} to Redis")
        parts += (b"$%d\r\n" % len(data), data, b"\r\n")
    return b"".join(parts)


def _streamed[T](
    client: redis.Redis, script: Script[T], calls: Iterable[ScriptCall]
) -> tuple[list[ScriptCall], list[object]]:
    """Single server: send the calls as they are made, gathered up to `SEND_CHUNK` bytes, then read every reply
    (an error reply as its exception). Gathered: a read's small calls (a list starts ten walks) go out in one
    write, one system call and one wake-up of Redis rather than one each, which cost both sides more CPU than the
    calls themselves; a write's big ones still go out while the next is encoded."""
    pool = client.connection_pool
    connection = pool.get_connection()
    sent: list[ScriptCall] = []
    try:
        pending: list[bytes] = []
        size = 0
        for keys, args in calls:
            packed = pack_command(("EVALSHA", script.sha, len(keys), *keys, *args))
            pending.append(packed)
            size += len(packed)
            sent.append((keys, args))
            if size >= SEND_CHUNK:
                connection.send_packed_command([b"".join(pending)])  # type: ignore[no-untyped-call]
                pending, size = [], 0
        if pending:
            connection.send_packed_command([b"".join(pending)])  # type: ignore[no-untyped-call]
        replies: list[object] = []
        for _ in sent:
            try:
                replies.append(connection.read_response())
            except redis.exceptions.ResponseError as error:
                replies.append(error)
    except BaseException:
        connection.disconnect()  # type: ignore[no-untyped-call]  # replies may still come: not reusable
        raise
    finally:
        pool.release(connection)
    return sent, replies


def _pipelined[T](
    client: redis.cluster.RedisCluster, script: Script[T], calls: Iterable[ScriptCall]
) -> tuple[list[ScriptCall], list[object]]:
    """Redis Cluster: one pipeline (redis-py sends each node its commands)."""
    pipe = client.pipeline(transaction=False)  # type: ignore[no-untyped-call]
    sent = list(calls)
    for keys, args in sent:
        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)  # ClusterPipeline.evalsha is not EVALSHA
    return sent, list(pipe.execute(raise_on_error=False))
