"""Reading one sandbox's records back by time from the entry layout (`egress.record.layout`).

The time index scores each stream entry with the time of its first record, and an entry spans at most `SPAN`
seconds, so the records of a window ``[low, high]`` are in the entries scored in ``[low - SPAN, high]``. Walking
the index in score order and holding back the records that a later entry could still precede gives the records
in exact (ts, id) order, a few index pages at a time. Uses the client `RecordStore.client` hands out (replies
decoded to str); Redis errors propagate.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Final

from egress.record.layout import SPAN, decode_entry, decode_records, index_key, stream_key
from egress.record.schema import AttemptRecord

FIRST_PAGE: Final = 4
"""Index entries read by the first round trip of a walk (an entry holds up to `layout.CHUNK` records)."""
MAX_PAGE: Final = 64
"""Index entries per round trip once a walk goes on."""

# KEYS: index, stream. ARGV: low, high (scores), the record id quoted as in the JSON ('"id":"<id>"'). The records
# (JSON) of the first entry in range that holds it, or false.
_FIND_SCRIPT: Final = """
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[2])) do
  local entry = redis.call('XRANGE', KEYS[2], member, member)[1]
  if entry then
    local fields = entry[2]
    for j = 1, #fields, 2 do
      if fields[j] == 'records' and string.find(fields[j + 1], ARGV[3], 1, true) then return fields[j + 1] end
    end
  end
end
return false
"""


def score(value: float) -> str:
    """A time as a Redis score bound."""
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return repr(value)


def fetch_entries(client: Any, sandbox: str, entry_ids: Sequence[str]) -> list[list[AttemptRecord]]:
    """The records of these stream entries, one round trip; [] for an entry trimmed since the index was read."""
    pipe = client.pipeline(transaction=False)
    stream = stream_key(sandbox)
    for entry_id in entry_ids:
        pipe.xrange(stream, entry_id, entry_id)
    return [decode_entry(reply[0][1]) if reply else [] for reply in pipe.execute()]


def records_by_time(
    client: Any,
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
        if descending:
            page = client.zrange(index, top, bottom, desc=True, byscore=True, offset=offset, num=size, withscores=True)
        else:
            page = client.zrange(index, bottom, top, byscore=True, offset=offset, num=size, withscores=True)
        for records in fetch_entries(client, sandbox, [member for member, _ in page]):
            pending.extend(r for r in records if low <= r.ts <= high and _beyond(r, after, descending))
        done = len(page) < size
        pending.sort(key=lambda record: (record.ts, record.id), reverse=descending)
        if done:
            yield from pending
            return
        # Entries not read yet score at most (at least, ascending) the last score read: a record of theirs is
        # within SPAN above it (at or above it), so what lies beyond that bound is final.
        last = float(page[-1][1])
        ready = 0
        if descending:
            while ready < len(pending) and pending[ready].ts > last + SPAN:
                ready += 1
        else:
            while ready < len(pending) and pending[ready].ts < last:
                ready += 1
        yield from pending[:ready]
        del pending[:ready]
        offset += len(page)
        size = min(size * 4, MAX_PAGE)


def _beyond(record: AttemptRecord, after: tuple[float, str] | None, descending: bool) -> bool:
    if after is None:
        return True
    key = (record.ts, record.id)
    return key < after if descending else key > after


def find(client: Any, sandboxes: Sequence[str], record_id: str, near: float) -> AttemptRecord | None:
    """The record with this id if an entry of one of ``sandboxes`` scored from 1 s + `SPAN` before ``near`` to 1 s
    after it holds it: one script per sandbox, in one round trip."""
    needle = f'"id":"{record_id}"'
    bounds = (score(near - 1.0 - SPAN), score(near + 1.001))
    pipe = client.pipeline(transaction=False)
    for sandbox in sandboxes:
        pipe.execute_command("EVAL", _FIND_SCRIPT, 2, index_key(sandbox), stream_key(sandbox), *bounds, needle)
    for payload in pipe.execute() if sandboxes else []:
        found = [item for item in decode_records(payload) if item.get("id") == record_id] if payload else []
        if found:
            return AttemptRecord.from_json(found[0])
    return None


def entry_records_in_range(client: Any, sandbox: str, low: float, high: float) -> Iterator[dict[str, Any]]:
    """The records (plain JSON objects, unvalidated) of the entries that may hold times in ``[low, high]``, in no
    particular order; the caller checks each record's ``ts``. For counting."""
    index, stream = index_key(sandbox), stream_key(sandbox)
    offset, page = 0, MAX_PAGE
    while True:
        members = client.zrange(index, score(low - SPAN), score(high), byscore=True, offset=offset, num=page)
        pipe = client.pipeline(transaction=False)
        for member in members:
            pipe.xrange(stream, member, member)
        for reply in pipe.execute() if members else []:
            if reply:
                payload = reply[0][1].get("records")
                if payload is not None:
                    yield from decode_records(payload)
        if len(members) < page:
            return
        offset += len(members)
