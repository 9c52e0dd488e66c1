"""Queries over the record store: attempts across sandboxes with filters and cursor pages, one attempt by id,
counts and series over a window (from the counters kept at write time, `egress.record.stats`), live follow, and the
agent actions (written and read here). Sends its commands through the
store's `RedisFacade` (`RecordStore.redis`). Redis errors propagate (`store.STORE_ERRORS`).

The key layout is the store's (docs/records.md); actions live in `egress.record.action_store`, re-exported here.
"""

from __future__ import annotations

import base64
import heapq
import json
import math
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from egress.record import stats
from egress.record.action_store import read_actions, read_newest_actions, write_actions
from egress.record.aggregate import fold
from egress.record.layout import decode_entry, stream_key
from egress.record.redis_facade import RedisFacade, StreamEntry
from egress.record.schema import AttemptRecord, id_time
from egress.record.store import RecordStore
from egress.record.walk import find, walks

__all__ = [
    "AttemptFilter",
    "attempts_for_sandbox",
    "counts",
    "decode_cursor",
    "destination_matches",
    "encode_cursor",
    "follow",
    "get_attempt",
    "list_attempts",
    "newest_attempts_for_sandbox",
    "read_actions",
    "read_newest_actions",
    "series",
    "write_actions",
]

COUNT_BY: Final = stats.BY
SCAN_BUDGET: Final = 20_000
"""Index entries one `list_attempts` call examines at most: a selective filter returns a short page (with a
cursor to go on) rather than reading the whole store in one request."""
FOLLOW_COUNT: Final = 1_000
"""Records per sandbox one `follow` call returns at most."""
FOLLOW_SLICE: Final = 0.5
"""Seconds one blocking read waits (new sandboxes are noticed between slices)."""

_ID: Final = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")


@dataclass(frozen=True, slots=True)
class AttemptFilter:
    """What `list_attempts` keeps; None matches everything."""

    sandbox: str | None = None
    category: str | None = None
    """A `RecordCategory` value (another string matches nothing)."""
    reason: str | None = None
    """A `egress.decide.Reason` value (another string matches nothing)."""
    destination: str | None = None
    """The destination address exactly, or a host name: the name itself or any name under it."""
    since: float | None = None
    """Epoch seconds, inclusive."""
    until: float | None = None
    """Epoch seconds, inclusive."""
    scope: frozenset[str] | None = None
    """The sandboxes a read may see at all (an API token's scope); None: every sandbox."""

    def matches(self, record: AttemptRecord) -> bool:
        """Whether ``record`` passes every filter (time included); what `--follow` applies to live records."""
        if self.sandbox is not None and record.sandbox != self.sandbox:
            return False
        if self.scope is not None and record.sandbox not in self.scope:
            return False
        if self.category is not None and record.category != self.category:
            return False
        if self.reason is not None and record.reason != self.reason:
            return False
        if self.since is not None and record.ts < self.since:
            return False
        if self.until is not None and record.ts > self.until:
            return False
        return self.destination is None or destination_matches(record, self.destination)


def destination_matches(record: AttemptRecord, destination: str) -> bool:
    want = destination.strip().lower().rstrip(".")
    if record.dst.lower() == want:
        return True
    host = record.host.lower().rstrip(".")
    return bool(host) and (host == want or host.endswith("." + want))


def encode_cursor(ts: float, sandbox: str, member: str) -> str:
    """The opaque cursor of a position in the newest-first order (ts, sandbox, stream id), all descending."""
    raw = json.dumps([ts, sandbox, member], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str, str]:
    try:
        value = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        ts, sandbox, member = value
        if isinstance(ts, int) and not isinstance(ts, bool):
            ts = float(ts)
        if isinstance(ts, float) and math.isfinite(ts) and isinstance(sandbox, str) and isinstance(member, str):
            return ts, sandbox, member
    except (ValueError, TypeError):
        pass
    raise ValueError(f"malformed cursor {cursor[:80]!r} (pass back a next_cursor unchanged)")


Position = tuple[float, str, str]
"""(ts, sandbox, record id): the newest-first order of `list_attempts` sorts by this, descending."""


def _walks(
    redis: RedisFacade, names: Sequence[str], flt: AttemptFilter, after: Position | None
) -> list[Iterator[tuple[Position, AttemptRecord]]]:
    """Each sandbox's records in the time window strictly after ``after`` in newest-first order (their first index
    pages read in one round trip)."""
    low = -math.inf if flt.since is None else flt.since
    high = math.inf if flt.until is None else flt.until
    starts: list[tuple[float, str] | None] = []
    for sandbox in names:
        start: tuple[float, str] | None = None
        if after is not None:
            ts, at_sandbox, record_id = after
            if sandbox < at_sandbox:  # sorts after the cursor's sandbox at an equal time: that time is still to come
                start = (ts, "~")  # "~" sorts after every id
            elif sandbox > at_sandbox:
                start = (ts, "")
            else:
                start = (ts, record_id)
        starts.append(start)
    records = walks(redis, names, low, high, starts, descending=True)
    return [_positions(sandbox, walk) for sandbox, walk in zip(names, records, strict=True)]


def _positions(sandbox: str, records: Iterator[AttemptRecord]) -> Iterator[tuple[Position, AttemptRecord]]:
    for record in records:
        yield (record.ts, sandbox, record.id), record


def list_attempts(
    store: RecordStore, flt: AttemptFilter, limit: int, cursor: str | None
) -> tuple[list[AttemptRecord], str | None]:
    """Attempts passing ``flt``, newest first, at most ``limit``; the cursor (None: no more) gives the next page.
    Pages neither skip nor repeat records, also when records share a time. A page may be short (even empty) with
    a cursor when a selective filter used up `SCAN_BUDGET`. A malformed cursor or an inverted range: ValueError."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if flt.since is not None and flt.until is not None and flt.since > flt.until:
        raise ValueError(f"time range inverted: since {flt.since} is after until {flt.until}")
    after = decode_cursor(cursor) if cursor is not None else None
    names = [flt.sandbox] if flt.sandbox is not None else store.sandboxes()
    names = in_scope(names, flt.scope)
    walks_ = _walks(store.redis, names, flt, after)
    merged = walks_[0] if len(walks_) == 1 else heapq.merge(*walks_, key=lambda item: item[0], reverse=True)
    found: list[AttemptRecord] = []
    last: Position | None = None
    for examined, (position, record) in enumerate(merged, 1):
        last = position
        if _passes(record, flt):
            found.append(record)
            if len(found) == limit:
                break
        if examined >= SCAN_BUDGET:
            break
    else:
        return found, None
    assert last is not None
    more = next(merged, None) is not None
    return found, encode_cursor(*last) if more else None


def _passes(record: AttemptRecord, flt: AttemptFilter) -> bool:
    if flt.category is not None and record.category != flt.category:
        return False
    if flt.reason is not None and record.reason != flt.reason:
        return False
    return flt.destination is None or destination_matches(record, flt.destination)


def get_attempt(store: RecordStore, attempt_id: str) -> AttemptRecord | None:
    """The attempt with this id (in any sandbox), or None. Looks near the time the id carries (ids are made from
    the record's ``ts``): one script per sandbox, in one round trip."""
    if not _ID.fullmatch(attempt_id):
        return None
    return find(store.redis, store.sandboxes(), attempt_id, id_time(attempt_id))


def in_scope(names: Sequence[str], scope: frozenset[str] | None) -> list[str]:
    """``names`` that a read limited to ``scope`` may see (None: every one)."""
    return list(names) if scope is None else [name for name in names if name in scope]


def counts(
    store: RecordStore, since: float, until: float, by: str, scope: frozenset[str] | None = None
) -> dict[str, int]:
    """Attempts of the whole minutes from the one holding ``since`` to the one holding ``until`` counted by one
    field (``destination``: the host name, or the address when there is none), most first; an aggregated record
    counts as its ``count``. Read from the counters kept at write time (`egress.record.stats`): minute resolution,
    a few hashes per sandbox, never the records. ``scope``: only these sandboxes."""
    if by not in COUNT_BY:
        raise ValueError(f"by must be one of {', '.join(COUNT_BY)}, got {by!r}")
    if since > until:
        return {}
    names = in_scope(store.sandboxes(), scope)
    return stats.counts_by_minutes(store.redis, names, [(stats.minute(since), stats.minute(until))], by)[0]


@dataclass(frozen=True, slots=True)
class Bucket:
    """Attempts of one span of whole minutes, counted by one field."""

    start: float
    """Epoch seconds: the start of its first minute."""
    end: float
    """Epoch seconds: the end of its last minute (``until`` for the bucket holding it)."""
    counts: dict[str, int]


def window_start(window_s: float, until: float) -> float:
    """Where a window of the last ``window_s`` seconds begins once cut to whole minutes (`stats.minutes`)."""
    return stats.minutes(window_s, until)[0] * stats.MINUTE


def series(
    store: RecordStore, window_s: float, until: float, buckets: int, by: str, scope: frozenset[str] | None = None
) -> list[Bucket]:
    """The last ``window_s`` seconds up to ``until`` cut into at most ``buckets`` equal spans of whole minutes
    (`stats.series_minutes`), counted by one field in each; one round trip for all of them. ``scope``: only these
    sandboxes."""
    if by not in COUNT_BY:
        raise ValueError(f"by must be one of {', '.join(COUNT_BY)}, got {by!r}")
    spans = stats.series_minutes(window_s, until, buckets)
    counted = stats.counts_by_minutes(store.redis, in_scope(store.sandboxes(), scope), spans, by)
    return [
        Bucket(first * stats.MINUTE, min((last + 1) * stats.MINUTE, until), counts)
        for (first, last), counts in zip(spans, counted, strict=True)
    ]


def follow(
    store: RecordStore, after: dict[str, str] | None, block_ms: int
) -> tuple[list[AttemptRecord], dict[str, str]]:
    """Records that arrived after the stream positions ``after`` (sandbox -> stream id; None: from now), waiting
    up to ``block_ms`` for some. Returns them (oldest first) and the positions to pass next time. A sandbox not in
    ``after`` is read from its beginning: it had no records when ``after`` was made."""
    redis = store.redis
    positions = dict(after) if after is not None else _ends(redis, store.sandboxes())
    deadline = time.monotonic() + max(block_ms, 0) / 1000
    while True:
        for sandbox in store.sandboxes():
            positions.setdefault(sandbox, "0-0")
        wait = min(deadline - time.monotonic(), FOLLOW_SLICE, store.socket_timeout / 2)
        replies = _read_streams(redis, positions, max(int(wait * 1000), 0))
        found: list[AttemptRecord] = []
        for sandbox, entries in replies:
            for entry_id, fields in entries:
                found.extend(decode_entry(fields))
                positions[sandbox] = entry_id
        if found or time.monotonic() >= deadline:
            found = fold(found, stand_in=False)  # updates of records returned earlier stay updates (update_of)
            found.sort(key=lambda record: (record.ts, record.id))
            return found, positions
        if redis.cluster and wait > 0:
            time.sleep(min(wait, 0.1))


def _ends(redis: RedisFacade, sandboxes: Sequence[str]) -> dict[str, str]:
    last = redis.last_ids([stream_key(sandbox) for sandbox in sandboxes])
    return {sandbox: entry_id or "0-0" for sandbox, entry_id in zip(sandboxes, last, strict=True)}


def _read_streams(redis: RedisFacade, positions: dict[str, str], block_ms: int) -> list[tuple[str, list[StreamEntry]]]:
    """XREAD of every sandbox's stream after its position: one blocking XREAD on a single server; on a Cluster
    (streams on several nodes, one XREAD per key) a pipeline of non-blocking reads that the caller repeats."""
    if not positions:
        time.sleep(block_ms / 1000)
        return []
    names = sorted(positions)
    streams = {stream_key(name): positions[name] for name in names}
    if not redis.cluster:
        by_key = {stream_key(name): name for name in names}
        return [(by_key[key], entries) for key, entries in redis.xread(streams, FOLLOW_COUNT, block_ms)]
    replies = redis.xread_each(streams, FOLLOW_COUNT)
    return [(name, entries) for name, entries in zip(names, replies, strict=True) if entries]


def attempts_for_sandbox(
    store: RecordStore, sandbox: str, since: float | None, until: float | None, limit: int
) -> list[AttemptRecord]:
    """Attempts of one sandbox in the window, oldest first: the first ``limit`` of them."""
    records, _ = store.read(sandbox, since, until, count=limit)
    return records


def newest_attempts_for_sandbox(
    store: RecordStore, sandbox: str, since: float | None, until: float | None, limit: int
) -> tuple[list[AttemptRecord], bool]:
    """The newest ``limit`` attempts of one sandbox in the window, oldest first, and whether older ones were left
    out (a timeline shows what happened last)."""
    records, more = store.read(sandbox, since, until, count=limit, reverse=True)
    return records[::-1], more is not None
