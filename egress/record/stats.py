"""Attempt counters kept at write time, and the counts and series read from them: what stats and charts read
instead of every record of a window.

Each stored entry adds its records' counts (an aggregate counts as its ``count``) to hashes per sandbox and period
of a minute, ten minutes, an hour and a day (`layout.counts_key`: ``<category>|<reason>`` -> attempts;
`layout.destinations_key`: destination -> attempts), by the delivery's write script itself (`COUNT_LUA`, spliced
after its seen-key check): an entry and its counts are stored together or not at all, and a replayed entry adds
nothing twice. The hashes share the sandbox's hash tag (one Cluster slot with its stream) and expire one period
after the records' age retention, counted from their last write; the size retention drops records but not their
counts.

Windows are whole minutes: a window of ``W`` seconds is the last ``ceil(W / 60)`` minutes up to ``until``, the
current one included (`minutes`); a window is read as the fewest whole days, hours, ten minutes and minutes that
cover it (`cover`; ten minutes only where a sandbox's are whole, `TENS_FIELD`), so a year costs about 530 hashes
per sandbox, an hour at most 23. docs/records.md, "Counters".
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Final

import msgspec

from egress.record.layout import counts_key, destinations_key, state_key
from egress.record.redis_facade import Arg, RedisFacade, Script, ScriptCall, UnexpectedReply, text
from egress.record.schema import AttemptRecord

MINUTE: Final = 60
UNITS: Final = (60, 600, 3600, 86400)
"""Seconds of the counted periods: minute, ten minutes, hour, day."""
TENS_FIELD: Final = "tens-from"
"""The field of a sandbox's state hash (`layout.state_key`) holding the first minute whose ten-minute hashes are
whole: set by the first write that keeps them (`TENS_LUA`), a while after it, so that no record written before
(by an egress without them) falls in a ten-minute period read as one. Before it, windows read minutes instead."""
TENS_MARGIN: Final = 20
"""Minutes from the first write that keeps ten-minute hashes to the first ten minutes read as one (rounded up to
ten): covers a gateway clock that runs ahead of Redis's."""
BY: Final = ("reason", "category", "sandbox", "destination")

# Spliced into the write script right after its seen-key check (egress/record/delivery.py). The counters' keys are
# the last KEYS and their arguments the last ARGV, so the script's own stay where they are: ARGV[#ARGV] is the
# number of counter keys, ARGV[#ARGV - 1] the number of counter arguments before it; for each key, its TTL
# (seconds), n, then n field/increment pairs.
COUNT_LUA: Final = """
do
  local a = #ARGV - 1 - tonumber(ARGV[#ARGV - 1])
  for k = #KEYS - tonumber(ARGV[#ARGV]) + 1, #KEYS do
    local n = tonumber(ARGV[a + 1])
    for j = a + 2, a + 2 * n, 2 do redis.call('HINCRBY', KEYS[k], ARGV[j], ARGV[j + 1]) end
    redis.call('EXPIRE', KEYS[k], ARGV[a])
    a = a + 2 + 2 * n
  end
end
"""

# Spliced into the write script after its XADD (``id``: the entry's id, Redis's clock) with its state hash as
# ``KEYS[3]``: the first write that keeps ten-minute hashes notes from when they are whole (`TENS_FIELD`).
TENS_LUA: Final = f"""
redis.call('HSETNX', KEYS[3], '{TENS_FIELD}',
  string.format('%d', (math.floor((tonumber(string.match(id, '^(%d+)-')) / 60000 + {TENS_MARGIN}) / 10) + 1) * 10))
"""

_GROUPS: Final = msgspec.json.Decoder(list[dict[str, int]])


def _groups(reply: object) -> list[dict[str, int]]:
    """The sum script's reply: one {field: total} per group."""
    try:
        return _GROUPS.decode(text(reply))
    except msgspec.DecodeError:  # a ValidationError too
        raise UnexpectedReply(f"expected an array of field totals, got {reply!r:.80}") from None


# KEYS: the sandbox's state hash (it names the slot; `TENS_FIELD` says from which minute on its ten-minute hashes
# are whole). ARGV: the stem of its counter keys (``<key of unit 0, period 0>`` less "0:0"); what to count by
# ("category" or "reason": that part of a ``<category>|<reason>`` field; "sandbox": every field as one, named "";
# "": the fields as they are); the first and last minute of each group, as one text "first last first last ...".
# Each group's minutes are covered by the fewest whole days, hours, ten minutes (from `TENS_FIELD` on) and minutes
# (`cover`), the key names made here (a request sends a few numbers, not the few hundred names an hour of minutes
# takes), and their hashes summed. Returns, per group, one JSON text: [{"<field>": total, ...}, ...]. Summed on the
# server, so a window of a hundred hashes is one small reply rather than a hundred for the client to parse; and one
# string, not two reply elements per field, which redis-py's parser (pure Python) took longer to read than the
# server took to sum. Each field is counted into its group's totals by the asked field
# at once (its name found once per script, not once per group and field; a name quoted as JSON once): the hash reads
# (about 4 us each) and this loop are what a chart's request costs the single-threaded server.
_SUM_SCRIPT: Final = Script(
    """
local tens = tonumber(redis.call('HGET', KEYS[1], 'TENS_FIELD') or '') or math.huge
local stem, by = ARGV[1], ARGV[2]
local sizes, prefixes = {1440, 60, 10, 1}, {stem .. '86400:', stem .. '3600:', stem .. '600:', stem .. '60:'}
local hgetall, call = 'HGETALL', redis.call
local names, quoted = {}, {}  -- a field's name once counted by `by`, and that name as JSON: made once a script
local out = {}
for first, last in string.gmatch(ARGV[3], '(%-?%d+) (%-?%d+)') do
  local at, last = tonumber(first), tonumber(last)
  local totals, order, n = {}, {}, 0
  while at <= last do
    local u = 4  -- a minute, unless a longer period starts here (each is a multiple of ten minutes) and fits
    if at % 10 == 0 then
      for v = 1, 3 do
        local size = sizes[v]
        if at % size == 0 and at + size - 1 <= last and (size ~= 10 or at >= tens) then u = v; break end
      end
    end
    local size = sizes[u]
    -- a whole number below 1e14 converts to text without a fraction or an exponent (Lua's %.14g)
    local flat = call(hgetall, prefixes[u] .. (at / size))
    at = at + size
    for j = 1, #flat, 2 do
      local f = flat[j]
      local name = names[f]
      if name == nil then
        if by == 'category' then name = string.match(f, '^[^|]*')
        elseif by == 'reason' then name = string.match(f, '^[^|]*|(.*)$') or ''
        elseif by == 'sandbox' then name = ''
        else name = f end
        names[f] = name
      end
      local total = totals[name]
      if total == nil then n = n + 1; order[n] = name; total = 0 end
      totals[name] = total + tonumber(flat[j + 1])
    end
  end
  local items = {}
  for i = 1, n do
    local name = order[i]
    local q = quoted[name]
    if q == nil then q = cjson.encode(name) .. ':'; quoted[name] = q end
    items[i] = q .. string.format('%d', totals[name])
  end
  out[#out + 1] = '{' .. table.concat(items, ',') .. '}'
end
return '[' .. table.concat(out, ',') .. ']'
""".replace("TENS_FIELD", TENS_FIELD),
    _groups,
)


def destination(record: AttemptRecord) -> str:
    """What ``by=destination`` counts: the host name, or the address when there is none."""
    return record.host or record.dst


Increment = tuple[str, int, dict[str, int]]
"""A counter hash's key, its TTL (seconds) and field -> increment."""


def increments(sandbox: str, records: Sequence[AttemptRecord], max_age_s: float) -> list[Increment]:
    """The counter hashes an entry of ``records`` (one sandbox's) adds to, in a fixed order (a replay sends the
    same). The records are counted once, per minute; a longer period sums its minutes (an entry spans a minute or
    two), not the records again."""
    minutes: dict[int, tuple[dict[str, int], dict[str, int]]] = {}
    for record in records:
        counts, destinations = minutes.setdefault(int(record.ts // MINUTE), ({}, {}))
        field = f"{record.category.value}|{record.reason.value}"
        counts[field] = counts.get(field, 0) + record.count
        where = destination(record)
        destinations[where] = destinations.get(where, 0) + record.count
    ordered = sorted(minutes.items())
    out: list[Increment] = []
    for unit in UNITS:
        size = unit // MINUTE
        by_period: dict[int, tuple[dict[str, int], dict[str, int]]] = {}
        for at, (counts, destinations) in ordered:
            if size == 1:
                by_period[at] = (counts, destinations)
                continue
            into_counts, into_destinations = by_period.setdefault(at // size, ({}, {}))
            for field, value in counts.items():
                into_counts[field] = into_counts.get(field, 0) + value
            for where, value in destinations.items():
                into_destinations[where] = into_destinations.get(where, 0) + value
        ttl = max(1, int(max_age_s)) + unit
        for period, (counts, destinations) in by_period.items():
            out.append((counts_key(sandbox, unit, period), ttl, counts))
            out.append((destinations_key(sandbox, unit, period), ttl, destinations))
    return out


def with_counters(
    keys: Sequence[str], args: Sequence[Arg], sandbox: str, records: Sequence[AttemptRecord], max_age_s: float
) -> ScriptCall:
    """The write script's call for an entry (``keys``, ``args``) with the entry's counters appended (`COUNT_LUA`)."""
    counter_keys: list[str] = []
    counter_args: list[Arg] = []
    for key, ttl, fields in increments(sandbox, records, max_age_s):
        counter_keys.append(key)
        counter_args += [ttl, len(fields)]
        for field, increment in fields.items():
            counter_args += [field, increment]
    return (*keys, *counter_keys), (*args, *counter_args, len(counter_args), len(counter_keys))


def minute(ts: float) -> int:
    return math.floor(ts / MINUTE)


def minutes(window_s: float, until: float) -> tuple[int, int]:
    """The minutes (first, last; inclusive) of a window of ``window_s`` seconds up to ``until``: the last
    ``ceil(window_s / 60)`` minutes, the one holding ``until`` included."""
    last = minute(until)
    return last - max(1, math.ceil(window_s / MINUTE)) + 1, last


def cover(first: int, last: int, tens_from: float = math.inf) -> list[tuple[int, int]]:
    """The fewest whole periods (unit in seconds, period) that cover the minutes ``first``..``last`` exactly:
    days where a whole UTC day fits, then hours, then ten minutes (only from the minute ``tens_from`` on: before,
    a sandbox's ten-minute hashes may miss records, `TENS_FIELD`), then minutes. What `_SUM_SCRIPT` reads."""
    out = []
    at = first
    while at <= last:
        for unit in reversed(UNITS):
            size = unit // MINUTE
            if at % size == 0 and at + size - 1 <= last and (size != 10 or at >= tens_from):
                out.append((unit, at // size))
                at += size
                break
    return out


def series_minutes(window_s: float, until: float, most: int) -> list[tuple[int, int]]:
    """At most ``most`` equal buckets (first, last minute; inclusive), oldest first, that cover the window's
    minutes (`minutes`). A bucket is whole minutes; a bucket of an hour or more is whole hours, of a day or more
    whole days, and the last one ends with the hour (day) holding ``until``, so each reads a few hashes."""
    first, last = minutes(window_s, until)
    span = last - first + 1
    step = math.ceil(span / max(1, most))
    align = 1
    for unit in (86400, 3600):
        size = unit // MINUTE
        if step >= size:
            step, align = math.ceil(step / size) * size, size
            break
    end = (last // align + 1) * align - 1
    while math.ceil((end - first + 1) / step) > most:  # the partial hour (day) of `until` took a bucket more
        step += align
    count = math.ceil((end - first + 1) / step)
    return [(end - (count - index) * step + 1, end - (count - 1 - index) * step) for index in range(count)]


@functools.lru_cache(maxsize=4096)
def _stem(by: str, sandbox: str) -> str:
    """The part of a sandbox's counter key names before ``<unit>:<period>`` (`_SUM_SCRIPT` makes the rest)."""
    make = destinations_key if by == "destination" else counts_key
    return make(sandbox, 0, 0).removesuffix("0:0")


def counts_by_minutes(
    redis: RedisFacade, sandboxes: Sequence[str], spans: Sequence[tuple[int, int]], by: str
) -> list[dict[str, int]]:
    """Attempts counted by ``by`` in each span of minutes (first, last; inclusive), most first (then by name): per
    sandbox one script that sums the hashes covering every span on the server (`cover`), all in one round trip."""
    if by not in BY:
        raise ValueError(f"by must be one of {', '.join(BY)}, got {by!r}")
    bounds = " ".join(f"{first} {last}" for first, last in spans)
    project = "" if by == "destination" else by
    calls: list[ScriptCall] = [([state_key(sandbox)], [_stem(by, sandbox), project, bounds]) for sandbox in sandboxes]
    totals: list[dict[str, int]] = [{} for _ in spans]
    for sandbox, summed in zip(sandboxes, redis.run_each(_SUM_SCRIPT, calls), strict=True):
        for total, fields in zip(totals, summed, strict=True):
            for field, value in fields.items():
                name = sandbox if by == "sandbox" else field
                total[name] = total.get(name, 0) + value
    return [dict(sorted(total.items(), key=lambda item: (-item[1], item[0]))) for total in totals]
