"""Reading one sandbox's records back by time from the entry layout (`egress.record.layout`).

The time index scores each stream entry with the time of its first record, and an entry spans at most `SPAN`
seconds, so the records of a window ``[low, high]`` are in the entries scored in ``[low - SPAN, high]``. Walking
the index in score order and holding back the records that a later entry could still precede gives the records
in exact (ts, id) order, a few index pages at a time. A count update carries its record's ``ts``, so it is final
with it and is folded into it (`aggregate.fold`) before the record is handed out: one record per attempt with its
total count. Sends its commands through the store's `RedisFacade`; Redis errors propagate (`STORE_ERRORS`).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator, Sequence
from typing import Final

from egress.record.aggregate import fold
from egress.record.layout import (
    ENTRY_RECORDS,
    SPAN,
    Counted,
    decode_counted,
    decode_entry,
    decode_payload,
    index_key,
    stream_key,
)
from egress.record.read_cache import ENTRIES
from egress.record.redis_facade import RedisFacade, Script, optional_text
from egress.record.schema import AttemptRecord

FIRST_PAGE: Final = 4
"""Index entries read by the first round trip of a walk (an entry holds up to `layout.CHUNK` records)."""
MAX_PAGE: Final = 64
"""Index entries per round trip once a walk goes on."""

# KEYS: index, stream. ARGV: low, high (scores), the record id quoted as in the JSON ('"<id>"': as ``id`` and as
# ``update_of``). The records (JSON) of the entries in range that hold it, as one JSON array of arrays, or false.
_FIND_SCRIPT: Final = Script(
    """
local found = {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[2])) do
  local entry = redis.call('XRANGE', KEYS[2], member, member)[1]
  if entry then
    local fields = entry[2]
    for j = 1, #fields, 2 do
      if fields[j] == 'records' and string.find(fields[j + 1], ARGV[3], 1, true) then
        found[#found + 1] = fields[j + 1]
      end
    end
  end
end
if #found == 0 then return false end
return '[' .. table.concat(found, ',') .. ']'
""",
    optional_text,
)


def score(value: float) -> str:
    """A time as a Redis score bound."""
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return repr(value)


def fetch_entries(redis: RedisFacade, sandbox: str, entry_ids: Sequence[str]) -> list[list[AttemptRecord]]:
    """The records of these stream entries, one round trip for those not in the process's `read_cache`; [] for
    an entry trimmed since the index was read."""
    stream = stream_key(sandbox)
    found = [ENTRIES.get((redis.url, stream, entry_id)) for entry_id in entry_ids]
    missing = [entry_id for entry_id, records in zip(entry_ids, found, strict=True) if records is None]
    fetched = dict(zip(missing, redis.xrange_each(stream, missing), strict=True))
    out = []
    for entry_id, records in zip(entry_ids, found, strict=True):
        if records is None:
            entry = fetched[entry_id]
            records = decode_entry(entry[1]) if entry is not None else []
            if entry is not None:
                ENTRIES.put((redis.url, stream, entry_id), records)
        out.append(records)
    return out


def records_by_time(
    redis: RedisFacade,
    sandbox: str,
    low: float,
    high: float,
    *,
    descending: bool = False,
    after: tuple[float, str] | None = None,
) -> Iterator[AttemptRecord]:
    """Records of ``sandbox`` with ``low <= ts <= high`` in (ts, id) order (descending when asked), strictly
    after the position ``after`` (a (ts, id) pair) in that order. Lazy: reads the index a page at a time."""
    if after is not None:
        if descending:
            high = min(high, after[0])
        else:
            low = max(low, after[0])
    if low > high:
        return
    index = index_key(sandbox)
    top, bottom = score(high), score(low - SPAN)
    pending: list[AttemptRecord] = []
    offset, size = 0, FIRST_PAGE
    while True:
        page = redis.zrange_by_score_with_scores(index, bottom, top, offset, size, descending=descending)
        for records in fetch_entries(redis, sandbox, [member for member, _ in page]):
            pending.extend(r for r in records if low <= r.ts <= high)
        done = len(page) < size
        pending.sort(key=lambda record: (record.ts, record.id), reverse=descending)
        if done:
            yield from _final(pending, after, descending)
            return
        # Entries not read yet score at most (at least, ascending) the last score read: a record of theirs is
        # within SPAN above it (at or above it), so what lies beyond that bound is final (and so are the count
        # updates of a record beyond it: they carry its ts).
        last = page[-1][1]
        ready = 0
        if descending:
            while ready < len(pending) and pending[ready].ts > last + SPAN:
                ready += 1
        else:
            while ready < len(pending) and pending[ready].ts < last:
                ready += 1
        yield from _final(pending[:ready], after, descending)
        del pending[:ready]
        offset += len(page)
        size = min(size * 4, MAX_PAGE)


def _final(records: list[AttemptRecord], after: tuple[float, str] | None, descending: bool) -> list[AttemptRecord]:
    """Final records (sorted) with their updates folded in, those strictly after ``after``."""
    if any(record.update_of for record in records):
        records = fold(records)
        records.sort(key=lambda record: (record.ts, record.id), reverse=descending)
    return [record for record in records if _beyond(record, after, descending)]


def _beyond(record: AttemptRecord, after: tuple[float, str] | None, descending: bool) -> bool:
    if after is None:
        return True
    key = (record.ts, record.id)
    return key < after if descending else key > after


def find(redis: RedisFacade, sandboxes: Sequence[str], record_id: str, near: float) -> AttemptRecord | None:
    """The record with this id, its count updates folded in, if an entry of one of ``sandboxes`` scored from 1 s +
    `SPAN` before ``near`` to 1 s after it holds it: one script per sandbox, in one round trip."""
    needle = f'"{record_id}"'
    bounds = (score(near - 1.0 - SPAN), score(near + 1.001))
    calls = (((index_key(sandbox), stream_key(sandbox)), (*bounds, needle)) for sandbox in sandboxes)
    for payload in redis.run_each(_FIND_SCRIPT, calls):
        if not payload:
            continue
        mine = [  # the record and its count updates (an update's own id is not an attempt's)
            record
            for entry in json.loads(payload)
            for record in decode_payload(json.dumps(entry))
            if (record.id == record_id and not record.update_of) or record.update_of == record_id
        ]
        if mine:
            return fold(mine)[0]
    return None


def entry_records_in_range(redis: RedisFacade, sandbox: str, low: float, high: float) -> Iterator[Counted]:
    """The records (what counting needs of them, unchecked) of the entries that may hold times in ``[low, high]``,
    in no particular order; the caller checks each record's ``ts``."""
    index, stream = index_key(sandbox), stream_key(sandbox)
    offset, page = 0, MAX_PAGE
    while True:
        members = redis.zrange_by_score(index, score(low - SPAN), score(high), offset, page)
        for entry in redis.xrange_each(stream, members):
            payload = entry[1].get(ENTRY_RECORDS) if entry is not None else None
            if payload is not None:
                yield from decode_counted(payload)
        if len(members) < page:
            return
        offset += len(members)


def read_page(
    redis: RedisFacade,
    sandbox: str,
    start_ts: float | None,
    end_ts: float | None,
    count: int,
    cursor: str | None,
    *,
    reverse: bool = False,
) -> tuple[list[AttemptRecord], str | None]:
    """`RecordStore.read`: a page of `records_by_time` and the cursor (``<ts>:<id>`` of its last record) of the
    next, None when there is no more. A malformed cursor or a count below 1 is a `ValueError`."""
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
    low = -math.inf if start_ts is None else start_ts
    high = math.inf if end_ts is None else end_ts
    records = records_by_time(redis, sandbox, low, high, descending=reverse, after=after)
    page = list(itertools.islice(records, count + 1))
    more = len(page) > count
    page = page[:count]
    return page, f"{page[-1].ts!r}:{page[-1].id}" if more else None
