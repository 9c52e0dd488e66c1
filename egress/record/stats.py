"""Attempt counters kept at write time, and the counts and series read from them: what stats and charts read
instead of every record of a window.

Each stored entry adds its records' counts (an aggregate counts as its ``count``) to hashes per sandbox and period
of a minute, an hour and a day (`layout.counts_key`: ``<category>|<reason>`` -> attempts; `layout.destinations_key`:
destination -> attempts), by the delivery's write script itself (`COUNT_LUA`, spliced after its seen-key check):
an entry and its counts are stored together or not at all, and a replayed entry adds nothing twice. The hashes
share the sandbox's hash tag (one Cluster slot with its stream) and expire one period after the records' age
retention, counted from their last write; the size retention drops records but not their counts.

Windows are whole minutes: a window of ``W`` seconds is the last ``ceil(W / 60)`` minutes up to ``until``, the
current one included (`minutes`); a window is read as the fewest whole days, hours and minutes that cover it
(`cover`), so a year costs about 530 hashes per sandbox, an hour 60. docs/records.md, "Counters".
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Final

import msgspec

from egress.record.layout import counts_key, destinations_key
from egress.record.redis_facade import Arg, RedisFacade, Script, ScriptCall, UnexpectedReply, text
from egress.record.schema import AttemptRecord

MINUTE: Final = 60
UNITS: Final = (60, 3600, 86400)
"""Seconds of the counted periods: minute, hour, day."""
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


_GROUPS: Final = msgspec.json.Decoder(list[dict[str, int]])


def _groups(reply: object) -> list[dict[str, int]]:
    """The sum script's reply: one {field: total} per group."""
    try:
        return _GROUPS.decode(text(reply))
    except msgspec.DecodeError:  # a ValidationError too
        raise UnexpectedReply(f"expected an array of field totals, got {reply!r:.80}") from None


# KEYS: counter hashes of one sandbox, group after group. ARGV: the number of hashes of each group. Returns, per
# group, its hashes summed, as one JSON text: [{"<field>": total, ...}, ...]. Summed on the server, so a window of
# a hundred hashes is one small reply rather than a hundred for the client to parse; and one string, not two reply
# elements per field, which redis-py's parser (pure Python) took longer to read than the server took to sum.
_SUM_SCRIPT: Final = Script(
    """
local out, k = {}, 1
for g = 1, #ARGV do
  local totals, fields = {}, {}
  for _ = 1, tonumber(ARGV[g]) do
    local flat = redis.call('HGETALL', KEYS[k])
    for j = 1, #flat, 2 do
      local f = flat[j]
      if totals[f] == nil then fields[#fields + 1] = f; totals[f] = 0 end
      totals[f] = totals[f] + tonumber(flat[j + 1])
    end
    k = k + 1
  end
  local items = {}
  for _, f in ipairs(fields) do items[#items + 1] = cjson.encode(f) .. ':' .. string.format('%d', totals[f]) end
  out[g] = '{' .. table.concat(items, ',') .. '}'
end
return '[' .. table.concat(out, ',') .. ']'
""",
    _groups,
)


def destination(record: AttemptRecord) -> str:
    """What ``by=destination`` counts: the host name, or the address when there is none."""
    return record.host or record.dst


Increment = tuple[str, int, dict[str, int]]
"""A counter hash's key, its TTL (seconds) and field -> increment."""


def increments(sandbox: str, records: Sequence[AttemptRecord], max_age_s: float) -> list[Increment]:
    """The counter hashes an entry of ``records`` (one sandbox's) adds to, in a fixed order (a replay sends the
    same)."""
    out: list[Increment] = []
    for unit in UNITS:
        by_period: dict[int, tuple[dict[str, int], dict[str, int]]] = {}
        for record in records:
            counts, destinations = by_period.setdefault(int(record.ts // unit), ({}, {}))
            field = f"{record.category.value}|{record.reason.value}"
            counts[field] = counts.get(field, 0) + record.count
            where = destination(record)
            destinations[where] = destinations.get(where, 0) + record.count
        ttl = max(1, int(max_age_s)) + unit
        for period, (counts, destinations) in sorted(by_period.items()):
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


def cover(first: int, last: int) -> list[tuple[int, int]]:
    """The fewest whole periods (unit in seconds, period) that cover the minutes ``first``..``last`` exactly:
    days where a whole UTC day fits, then hours, then minutes."""
    out = []
    at = first
    while at <= last:
        for unit in reversed(UNITS):
            size = unit // MINUTE
            if at % size == 0 and at + size - 1 <= last:
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


def _field_key(by: str, sandbox: str, field: str) -> str:
    if by == "reason":
        return field.partition("|")[2]
    if by == "category":
        return field.partition("|")[0]
    if by == "sandbox":
        return sandbox
    return field


@functools.lru_cache(maxsize=4096)
def _keys(by: str, sandbox: str, first: int, last: int) -> tuple[str, ...]:
    """The hashes that cover the minutes ``first``..``last`` of a sandbox. Kept: a window moves once a minute, so
    every request of that minute names the same few hundred keys (names only: what they hold is read each time)."""
    make = destinations_key if by == "destination" else counts_key
    return tuple(make(sandbox, unit, period) for unit, period in cover(first, last))


def counts_by_minutes(
    redis: RedisFacade, sandboxes: Sequence[str], spans: Sequence[tuple[int, int]], by: str
) -> list[dict[str, int]]:
    """Attempts counted by ``by`` in each span of minutes (first, last; inclusive), most first (then by name): per
    sandbox one script that sums the covering hashes of every span on the server, all in one round trip."""
    if by not in BY:
        raise ValueError(f"by must be one of {', '.join(BY)}, got {by!r}")
    calls: list[ScriptCall] = []
    for sandbox in sandboxes:
        groups = [_keys(by, sandbox, first, last) for first, last in spans]
        calls.append(([key for group in groups for key in group], [len(group) for group in groups]))
    totals: list[dict[str, int]] = [{} for _ in spans]
    for sandbox, summed in zip(sandboxes, redis.run_each(_SUM_SCRIPT, calls), strict=True):
        for total, fields in zip(totals, summed, strict=True):
            for field, value in fields.items():
                name = _field_key(by, sandbox, field)
                total[name] = total.get(name, 0) + value
    return [dict(sorted(total.items(), key=lambda item: (-item[1], item[0]))) for total in totals]
