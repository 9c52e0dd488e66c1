"""Queries over the record store: attempts across sandboxes with filters and cursor pages, one attempt by id,
counts over a window, live follow, and the agent actions (written and read here). Uses the store's client
(`RecordStore.client`); only `egress.record.store` imports redis. Redis errors propagate (`store.STORE_ERRORS`).

The key layout is the store's (docs/records.md); actions live in `egress.record.action_store`, re-exported here.
"""

from __future__ import annotations

import base64
import heapq
import itertools
import json
import math
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from egress.record.action_store import read_actions, write_actions
from egress.record.schema import AttemptRecord, id_time
from egress.record.store import RecordStore, index_key, stream_key

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
    "read_actions",
    "write_actions",
]

COUNT_BY: Final = ("reason", "category", "sandbox", "destination")
SCAN_BUDGET: Final = 20_000
"""Index entries one `list_attempts` call examines at most: a selective filter returns a short page (with a
cursor to go on) rather than reading the whole store in one request."""
CHUNK: Final = 200
"""Index entries read per round trip."""
COUNT_CHUNK: Final = 5_000
"""Records one counting script reads (bounds how long it holds the server)."""
FOLLOW_COUNT: Final = 1_000
"""Records per sandbox one `follow` call returns at most."""
FOLLOW_SLICE: Final = 0.5
"""Seconds one blocking read waits (new sandboxes are noticed between slices)."""

_ID: Final = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")

# KEYS: index, stream. ARGV: low, high (scores), id. The record with that id among the index entries in range.
_FIND_SCRIPT: Final = """
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[2])) do
  local entry = redis.call('XRANGE', KEYS[2], member, member)[1]
  if entry then
    local fields = entry[2]
    for i = 1, #fields, 2 do
      if fields[i] == 'id' and fields[i + 1] == ARGV[3] then return fields end
    end
  end
end
return false
"""

# KEYS: stream. ARGV: entry ids. Each entry's fields as one JSON array [name, value, ...]; '' for one not there.
_FETCH_SCRIPT: Final = """
local out = {}
for i, member in ipairs(ARGV) do
  local entry = redis.call('XRANGE', KEYS[1], member, member)[1]
  if entry then out[i] = cjson.encode(entry[2]) else out[i] = '' end
end
return out
"""

# KEYS: index, stream. ARGV: low, high, field ('destination': host, else dst), offset, count. Returns
# {processed, last score, entries at the last score, key1, n1, ...}: `count` summed by the field over `count`
# index entries.
_COUNT_SCRIPT: Final = """
local page = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[2], 'WITHSCORES', 'LIMIT', ARGV[4], ARGV[5])
local sums, order = {}, {}
for i = 1, #page, 2 do
  local entry = redis.call('XRANGE', KEYS[2], page[i], page[i])[1]
  if entry then
    local fields, key, dst, n = entry[2], '', '', 1
    for j = 1, #fields, 2 do
      local name = fields[j]
      if name == 'count' then n = tonumber(fields[j + 1])
      elseif name == 'dst' then dst = fields[j + 1]
      elseif name == ARGV[3] or (ARGV[3] == 'destination' and name == 'host') then key = fields[j + 1] end
    end
    if ARGV[3] == 'destination' and key == '' then key = dst end
    if sums[key] == nil then sums[key] = 0; order[#order + 1] = key end
    sums[key] = sums[key] + n
  end
end
local tail = 0
for i = #page, 2, -2 do
  if page[i] ~= page[#page] then break end
  tail = tail + 1
end
local out = {#page / 2, page[#page] or '0', tail}
for _, key in ipairs(order) do out[#out + 1] = key; out[#out + 1] = sums[key] end
return out
"""


@dataclass(frozen=True, slots=True)
class AttemptFilter:
    """What `list_attempts` keeps; None matches everything."""

    sandbox: str | None = None
    category: str | None = None
    reason: str | None = None
    destination: str | None = None
    """The destination address exactly, or a host name: the name itself or any name under it."""
    since: float | None = None
    """Epoch seconds, inclusive."""
    until: float | None = None
    """Epoch seconds, inclusive."""

    def matches(self, record: AttemptRecord) -> bool:
        """Whether ``record`` passes every filter (time included); what `--follow` applies to live records."""
        if self.sandbox is not None and record.sandbox != self.sandbox:
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
"""(ts, sandbox, stream id): the newest-first order of `list_attempts` sorts by this, descending."""


def _walk(client: Any, sandbox: str, flt: AttemptFilter, after: Position | None, size: int) -> Iterator[Position]:
    """Index entries of one sandbox in the time window strictly after ``after`` in newest-first order."""
    index = index_key(sandbox)
    high: str = "+inf" if flt.until is None else repr(flt.until)
    low: str = "-inf" if flt.since is None else repr(flt.since)
    if after is not None and (flt.until is None or after[0] <= flt.until):
        ts, at_sandbox, member = after
        if sandbox < at_sandbox:
            high = repr(ts)
        else:
            high = f"({ts!r}"
            if sandbox == at_sandbox and (flt.since is None or ts >= flt.since):
                ties = client.zrangebyscore(index, ts, ts)
                yield from ((ts, sandbox, tie) for tie in sorted(ties, reverse=True) if tie < member)
    offset = 0
    while True:
        page = client.zrange(index, high, low, desc=True, byscore=True, offset=offset, num=size, withscores=True)
        yield from ((float(score), sandbox, member) for member, score in page)
        if len(page) < size:
            return
        offset += len(page)
        size = min(size * 4, CHUNK)


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
    client = store.client()
    names = [flt.sandbox] if flt.sandbox is not None else store.sandboxes()
    first = min(limit + 1, CHUNK)  # one round trip per sandbox when nothing is filtered out
    walks = [_walk(client, name, flt, after, first) for name in names]
    entries = heapq.merge(*walks, reverse=True)
    found: list[AttemptRecord] = []
    examined = 0
    last: Position | None = None
    selective = flt.category is not None or flt.reason is not None or flt.destination is not None
    while len(found) < limit and examined < SCAN_BUDGET:
        size = limit - len(found) if not selective else max(limit - len(found), 64)
        batch = list(itertools.islice(entries, min(size, CHUNK, SCAN_BUDGET - examined)))
        if not batch:
            return found, None
        for entry, record in zip(batch, _fetch(client, batch), strict=True):
            examined += 1
            last = entry
            if record is not None and _passes(record, flt):
                found.append(record)
                if len(found) == limit:
                    break
        if len(found) == limit and last is not None and last is not batch[-1]:
            return found, encode_cursor(*last)  # unread entries of this batch remain
    assert last is not None
    more = next(entries, None) is not None
    return found, encode_cursor(*last) if more else None


def _passes(record: AttemptRecord, flt: AttemptFilter) -> bool:
    if flt.category is not None and record.category != flt.category:
        return False
    if flt.reason is not None and record.reason != flt.reason:
        return False
    return flt.destination is None or destination_matches(record, flt.destination)


def _fetch(client: Any, entries: Sequence[Position]) -> list[AttemptRecord | None]:
    """The records of index entries (None for one trimmed from its stream since), in one round trip: one script
    per sandbox, each record coming back as one JSON string (a few large replies parse much faster than many
    small ones)."""
    by_sandbox: dict[str, list[int]] = {}
    for at, (_, sandbox, _) in enumerate(entries):
        by_sandbox.setdefault(sandbox, []).append(at)
    pipe = client.pipeline(transaction=False)
    for sandbox, places in by_sandbox.items():
        members = [entries[at][2] for at in places]
        pipe.execute_command("EVAL", _FETCH_SCRIPT, 1, stream_key(sandbox), *members)
    out: list[AttemptRecord | None] = [None] * len(entries)
    for places, reply in zip(by_sandbox.values(), pipe.execute(), strict=True):
        for at, text in zip(places, reply, strict=True):
            if text:
                flat = json.loads(text)
                out[at] = AttemptRecord.from_fields(dict(zip(flat[::2], flat[1::2], strict=True)))
    return out


def get_attempt(store: RecordStore, attempt_id: str) -> AttemptRecord | None:
    """The attempt with this id (in any sandbox), or None. Looks near the time the id carries (ids are made from
    the record's ``ts``), one script per sandbox in one round trip."""
    if not _ID.fullmatch(attempt_id):
        return None
    at = id_time(attempt_id)
    client = store.client()
    pipe = client.pipeline(transaction=False)
    for sandbox in store.sandboxes():
        keys = (index_key(sandbox), stream_key(sandbox))
        pipe.execute_command("EVAL", _FIND_SCRIPT, 2, *keys, repr(at - 1.0), repr(at + 1.001), attempt_id)
    for reply in pipe.execute():
        if reply:
            return AttemptRecord.from_fields(dict(zip(reply[::2], reply[1::2], strict=True)))
    return None


def counts(store: RecordStore, since: float, until: float, by: str) -> dict[str, int]:
    """Attempts with ``since <= ts <= until`` counted by one field (``destination``: the host name, or the address
    when there is none); an aggregated record counts as its ``count``. Summed on the server, in chunks."""
    if by not in COUNT_BY:
        raise ValueError(f"by must be one of {', '.join(COUNT_BY)}, got {by!r}")
    client = store.client()
    total: dict[str, int] = {}
    for sandbox in store.sandboxes():
        keys = (index_key(sandbox), stream_key(sandbox))
        low, skip = repr(since), 0
        while True:
            reply = client.execute_command("EVAL", _COUNT_SCRIPT, 2, *keys, low, repr(until), by, skip, COUNT_CHUNK)
            processed, last_score, tail, pairs = int(reply[0]), reply[1], int(reply[2]), reply[3:]
            for key, value in zip(pairs[::2], pairs[1::2], strict=True):
                total[key] = total.get(key, 0) + int(value)
            if processed < COUNT_CHUNK:
                break
            # Resume at the last score, skipping the entries at that score already counted (ties sort by member).
            skip = skip + processed if float(last_score) == float(low) else tail
            low = last_score
    return dict(sorted(total.items(), key=lambda item: (-item[1], item[0])))


def follow(
    store: RecordStore, after: dict[str, str] | None, block_ms: int
) -> tuple[list[AttemptRecord], dict[str, str]]:
    """Records that arrived after the stream positions ``after`` (sandbox -> stream id; None: from now), waiting
    up to ``block_ms`` for some. Returns them (oldest first) and the positions to pass next time. A sandbox not in
    ``after`` is read from its beginning: it had no records when ``after`` was made."""
    client = store.client()
    positions = dict(after) if after is not None else _ends(client, store.sandboxes())
    deadline = time.monotonic() + max(block_ms, 0) / 1000
    while True:
        for sandbox in store.sandboxes():
            positions.setdefault(sandbox, "0-0")
        wait = min(deadline - time.monotonic(), FOLLOW_SLICE, store.socket_timeout / 2)
        replies = _read_streams(client, store.cluster, positions, max(int(wait * 1000), 0))
        found: list[AttemptRecord] = []
        for sandbox, entries in replies:
            for entry_id, fields in entries:
                found.append(AttemptRecord.from_fields(fields))
                positions[sandbox] = entry_id
        if found or time.monotonic() >= deadline:
            found.sort(key=lambda record: (record.ts, record.id))
            return found, positions
        if store.cluster and wait > 0:
            time.sleep(min(wait, 0.1))


def _ends(client: Any, sandboxes: Sequence[str]) -> dict[str, str]:
    pipe = client.pipeline(transaction=False)
    for sandbox in sandboxes:
        pipe.xrevrange(stream_key(sandbox), count=1)
    return {
        sandbox: (reply[0][0] if reply else "0-0") for sandbox, reply in zip(sandboxes, pipe.execute(), strict=True)
    }


def _read_streams(
    client: Any, cluster: bool, positions: dict[str, str], block_ms: int
) -> list[tuple[str, list[tuple[str, dict[str, str]]]]]:
    """XREAD of every sandbox's stream after its position: one blocking XREAD on a single server; on a Cluster
    (streams on several nodes, one XREAD per key) a pipeline of non-blocking reads that the caller repeats."""
    if not positions:
        time.sleep(block_ms / 1000)
        return []
    names = sorted(positions)
    if not cluster:
        streams = {stream_key(name): positions[name] for name in names}
        reply = client.xread(streams, count=FOLLOW_COUNT, block=block_ms or None) or []
        by_key = {stream_key(name): name for name in names}
        return [(by_key[key], entries) for key, entries in reply]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.xread({stream_key(name): positions[name]}, count=FOLLOW_COUNT)
    return [(name, reply[0][1]) for name, reply in zip(names, pipe.execute(), strict=True) if reply]


def attempts_for_sandbox(
    store: RecordStore, sandbox: str, since: float | None, until: float | None, limit: int
) -> list[AttemptRecord]:
    """Attempts of one sandbox in the window, oldest first: the first ``limit`` of them."""
    records, _ = store.read(sandbox, since, until, count=limit)
    return records
