"""Reading one sandbox's records back by time from the entry layout (`egress.record.layout`).

The time index scores each stream entry with the time of its first record, and an entry spans at most `SPAN`
seconds, so the records of a window ``[low, high]`` are in the entries scored in ``[low - SPAN, high]``. A walk
reads the index a page at a time in score order and merges the entries it has read (each kept sorted by the read
cache) record by record: a record is handed out once no entry still unread can hold one that comes before it, so
the records come in exact (ts, id) order and a reader that stops early pays for the records it took, not for every
record of the entries it had to look at. A count update carries its record's ``ts``, so it is final with it and is
folded into it (`aggregate.fold`) before the record is handed out: one record per attempt with its total count.
Index pages continue from the last score read (not from an offset), so an entry written meanwhile neither shifts a
walk nor is read twice. Sends its commands through the store's `RedisFacade`; Redis errors propagate
(`STORE_ERRORS`).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import json
import math
import operator
from collections.abc import Iterator, Sequence
from typing import Final

from egress.record.aggregate import fold
from egress.record.layout import SPAN, decode_entry, decode_payload, index_key, stream_key
from egress.record.read_cache import ENTRIES
from egress.record.redis_facade import RedisFacade, Script, UnexpectedReply, optional_text, text
from egress.record.schema import AttemptRecord

FIRST_PAGE: Final = 32
"""Index entries read by the first round trip of a walk: about the `SPAN` seconds a walk must look past a record
before handing it out, for a sandbox that has an entry a second (the recorder's tick)."""
MAX_PAGE: Final = 128
"""Index entries per round trip once a walk goes on."""
FIRST_CHUNK: Final = 8
"""Entries a walk fetches (and decodes) at first; each later fetch twice as many, up to `MAX_PAGE`: a walk that
stops after a few entries does not fetch the rest of the index page it read."""

_TIME: Final = operator.attrgetter("ts")


def _order(record: AttemptRecord) -> tuple[float, str]:
    return record.ts, record.id


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


def _scored(reply: object) -> list[tuple[str, float]]:
    """The index page script's reply: (member, score) pairs."""
    words = text(reply).split()
    if len(words) % 2:
        raise UnexpectedReply(f"expected members and scores, got {reply!r:.80}")
    try:
        return list(zip(words[0::2], map(float, words[1::2]), strict=True))
    except ValueError:
        raise UnexpectedReply(f"expected members and scores, got {reply!r:.80}") from None


# KEYS: index. ARGV: the first and last score bound in the order read, offset, count, "1" to read descending.
# ZRANGE ... WITHSCORES as one string "member score member score ...": a page of index members is one bulk reply,
# not three reply elements per member to parse (what a walk reads most).
_PAGE_SCRIPT: Final = Script(
    """
local options = {'BYSCORE', 'LIMIT', ARGV[3], ARGV[4], 'WITHSCORES'}
if ARGV[5] == '1' then table.insert(options, 1, 'REV') end
return table.concat(redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2], unpack(options)), ' ')
""",
    _scored,
)


def score(value: float) -> str:
    """A time as a Redis score bound."""
    if math.isinf(value):
        return "+inf" if value > 0 else "-inf"
    return repr(value)


def fetch_entries(redis: RedisFacade, sandbox: str, entry_ids: Sequence[str]) -> list[list[AttemptRecord]]:
    """The records of these stream entries, each sorted by (ts, id), one round trip for those not in the
    process's `read_cache`; [] for an entry trimmed since the index was read. The lists are shared: never change
    them."""
    stream = stream_key(sandbox)
    url = redis.url
    found = ENTRIES.get_many([(url, stream, entry_id) for entry_id in entry_ids])
    missing = [entry_id for entry_id, records in zip(entry_ids, found, strict=True) if records is None]
    fetched = dict(zip(missing, redis.xrange_each(stream, missing), strict=True)) if missing else {}
    out = []
    for entry_id, records in zip(entry_ids, found, strict=True):
        if records is None:
            entry = fetched[entry_id]
            records = sorted(decode_entry(entry[1]), key=_order) if entry is not None else []
            if entry is not None:
                ENTRIES.put((redis.url, stream, entry_id), records)
        out.append(records)
    return out


def _entries_of(
    redis: RedisFacade, sandbox: str, page: Sequence[tuple[str, float]], chunks: list[int]
) -> Iterator[list[AttemptRecord]]:
    """The records of a page's entries, in its order, fetched (`fetch_entries`) a chunk at a time as the walk
    asks for them: a walk that stops early (a list page takes a few entries of each sandbox) neither fetches nor
    decodes the rest of an index page, nor fills the read cache with them. ``chunks`` holds the next chunk's
    size, doubled after each fetch up to `MAX_PAGE` (shared by the walk's pages)."""
    at = 0
    while at < len(page):
        size = chunks[0]
        chunks[0] = min(size * 2, MAX_PAGE)
        yield from fetch_entries(redis, sandbox, [member for member, _ in page[at : at + size]])
        at += size


def _page_args(low: float, high: float, skip: int, size: int, descending: bool) -> list[str | int]:
    """`_PAGE_SCRIPT`'s arguments for the members scored in ``[low, high]``."""
    bounds = (score(high), score(low)) if descending else (score(low), score(high))
    return [*bounds, skip, size, int(descending)]


def index_pages(
    redis: RedisFacade,
    sandbox: str,
    low: float,
    high: float,
    *,
    descending: bool,
    first: list[tuple[str, float]] | None = None,
) -> Iterator[list[tuple[str, float]]]:
    """The index members (entry id, score) scored in ``[low, high]``, in score order, a page at a time (pages
    grow from `FIRST_PAGE` to `MAX_PAGE`; ``first``: the first page, read already). A page goes on from the last
    score read, skipping the members of that score already read: a member added meanwhile shifts nothing and none
    is read twice."""
    index = index_key(sandbox)
    edge: float | None = None
    at_edge: set[str] = set()
    size = FIRST_PAGE
    while True:
        if first is not None:
            page, first = first, None
        else:
            page = redis.run(_PAGE_SCRIPT, [index], _page_args(low, high, len(at_edge), size, descending))
        fresh = [(member, value) for member, value in page if value != edge or member not in at_edge]
        if fresh:
            yield fresh
        if len(page) < size:
            return
        last = page[-1][1]
        if last != edge:
            edge, at_edge = last, set()
        at_edge.update(member for member, value in page if value == last)
        if descending:
            high = last
        else:
            low = last
        size = min(size * 4, MAX_PAGE)


class _Merge:
    """The entries a walk has read, merged: each entry's next record in the window, in a heap by signed time."""

    def __init__(self, low: float, high: float, descending: bool) -> None:
        self.low, self.high = low, high
        self.sign, self.step = (-1.0, -1) if descending else (1.0, 1)
        self.descending = descending
        self.entries: list[list[AttemptRecord]] = []
        self.heap: list[tuple[float, int, int]] = []
        """(signed ts of the entry's next record, the entry's number, that record's position in the entry)."""

    def add(self, records: list[AttemptRecord]) -> None:
        """An entry's records (sorted by (ts, id))."""
        if not records:
            return
        if self.descending:  # the entry's newest record, unless the window ends within it
            at = (
                len(records) - 1
                if records[-1].ts <= self.high
                else bisect.bisect_right(records, self.high, key=_TIME) - 1
            )
        else:
            at = 0 if records[0].ts >= self.low else bisect.bisect_left(records, self.low, key=_TIME)
        self._push(records, len(self.entries), at)
        self.entries.append(records)

    def _push(self, records: list[AttemptRecord], number: int, at: int) -> None:
        if 0 <= at < len(records) and self.low <= records[at].ts <= self.high:
            heapq.heappush(self.heap, (self.sign * records[at].ts, number, at))

    def take(self, bound: float) -> Iterator[list[AttemptRecord]]:
        """The records whose signed time is below ``bound``, a time at a time, in order. While one entry alone
        holds the next records (the usual case: entries rarely overlap), they are taken from it in a run, up to
        the next record of another entry, without a heap operation each."""
        heap = self.heap
        low, high, sign, step = self.low, self.high, self.sign, self.step
        while heap and heap[0][0] < bound:
            key, number, at = heapq.heappop(heap)
            records = self.entries[number]
            count = len(records)
            if heap and heap[0][0] == key:  # other entries hold records of this time too: one group of them all
                group = self._same_time(records, number, at)
                while heap and heap[0][0] == key:
                    _, other, other_at = heapq.heappop(heap)
                    group += self._same_time(self.entries[other], other, other_at)
                yield group
                continue
            stop = min(bound, heap[0][0]) if heap else bound
            while True:
                ts = records[at].ts
                group = [records[at]]
                at += step
                while 0 <= at < count and records[at].ts == ts:
                    group.append(records[at])
                    at += step
                yield group
                if not 0 <= at < count:
                    break
                ts = records[at].ts
                if not low <= ts <= high or sign * ts >= stop:
                    self._push(records, number, at)
                    break

    def _same_time(self, records: list[AttemptRecord], number: int, at: int) -> list[AttemptRecord]:
        """The entry's records of the time of its record ``at`` (taken); its next one goes back in the heap."""
        ts = records[at].ts
        group = []
        while 0 <= at < len(records) and records[at].ts == ts:
            group.append(records[at])
            at += self.step
        self._push(records, number, at)
        return group


def _window(low: float, high: float, after: tuple[float, str] | None, descending: bool) -> tuple[float, float] | None:
    """The times a walk strictly after ``after`` may hand out; None when there are none."""
    if after is not None:
        if descending:
            high = min(high, after[0])
        else:
            low = max(low, after[0])
    return (low, high) if low <= high else None


def records_by_time(
    redis: RedisFacade,
    sandbox: str,
    low: float,
    high: float,
    *,
    descending: bool = False,
    after: tuple[float, str] | None = None,
    first: list[tuple[str, float]] | None = None,
) -> Iterator[AttemptRecord]:
    """Records of ``sandbox`` with ``low <= ts <= high`` in (ts, id) order (descending when asked), strictly
    after the position ``after`` (a (ts, id) pair) in that order. Lazy: reads the index a page at a time (the
    first may be given: `walks`), and takes from the entries read only the records it hands out."""
    window = _window(low, high, after, descending)
    if window is None:
        return
    low, high = window
    chunks = [FIRST_CHUNK]  # the next fetch's size, grown by `_entries_of` as the walk goes on
    merge = _Merge(low, high, descending)
    heap = merge.heap
    for page in index_pages(redis, sandbox, low - SPAN, high, descending=descending, first=first):
        for (_, value), records in zip(page, _entries_of(redis, sandbox, page, chunks), strict=True):
            merge.add(records)
            # Entries not read yet score at most (at least, ascending) this one's score: a record of theirs is
            # within SPAN above it (at or above it), so what lies beyond that bound is final (and so are the count
            # updates of a record beyond it: they carry its ts). Handed out entry by entry: a reader that stops
            # early (a list page takes ten records of each sandbox) has its entries looked at up to there only.
            bound = -(value + SPAN) if descending else value
            if heap and heap[0][0] < bound:
                for group in merge.take(bound):
                    yield from _final(group, after, descending)
    for group in merge.take(math.inf):
        yield from _final(group, after, descending)


def walks(
    redis: RedisFacade,
    sandboxes: Sequence[str],
    low: float,
    high: float,
    afters: Sequence[tuple[float, str] | None],
    *,
    descending: bool,
) -> list[Iterator[AttemptRecord]]:
    """`records_by_time` of each sandbox (``afters``: each one's position), their first index pages read at once:
    one round trip for all of them rather than one per sandbox as a merge starts them."""
    windows = [_window(low, high, after, descending) for after in afters]
    calls = [
        ([index_key(sandbox)], _page_args(window[0] - SPAN, window[1], 0, FIRST_PAGE, descending))
        for sandbox, window in zip(sandboxes, windows, strict=True)
        if window is not None
    ]
    firsts = iter(redis.run_each(_PAGE_SCRIPT, calls))
    return [
        records_by_time(
            redis,
            sandbox,
            low,
            high,
            descending=descending,
            after=after,
            first=next(firsts) if window is not None else None,
        )
        for sandbox, after, window in zip(sandboxes, afters, windows, strict=True)
    ]


def _final(records: list[AttemptRecord], after: tuple[float, str] | None, descending: bool) -> list[AttemptRecord]:
    """Records of one time with their updates folded in, sorted, those strictly after ``after``."""
    if len(records) == 1 and not records[0].update_of:
        return records if _beyond(records[0], after, descending) else []
    if any(record.update_of for record in records):
        records = fold(records)
    records.sort(key=_order, reverse=descending)
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
