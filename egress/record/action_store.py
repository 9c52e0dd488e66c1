"""Agent actions in Redis: written idempotently by (sandbox, id), read by the time window their spans overlap.
Sends its scripts through the store's `RedisFacade` (`RecordStore.redis`); the keys are `layout.action_keys`
(docs/records.md). `query` re-exports both functions: callers use ``query.write_actions`` and
``query.read_actions``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Final

from egress.record.actions import ActionRecord
from egress.record.layout import action_keys
from egress.record.redis_facade import Arg, Script, ScriptCall, integer, optional_texts
from egress.record.store import RecordStore

ACTION_CHUNK: Final = 256
"""Actions per script call."""
TRIM_MAX: Final = 10_000
"""Actions one write drops at most for retention (bounds one script's run; the next write goes on)."""


# KEYS: action_keys. ARGV: max actions, oldest start kept, most to drop, then per action: id, start, end ('inf'
# while running), JSON. A re-sent id replaces the stored action (HSET/ZADD overwrite). Then retention trims, oldest
# start first.
_WRITE_ACTIONS_SCRIPT: Final = Script(
    """
local span = tonumber(redis.call('GET', KEYS[4]) or '0')
local longest = span
for i = 4, #ARGV, 4 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 3])
  redis.call('ZADD', KEYS[2], ARGV[i + 1], ARGV[i])
  redis.call('ZADD', KEYS[3], ARGV[i + 2], ARGV[i])
  if ARGV[i + 2] ~= 'inf' then
    longest = math.max(longest, tonumber(ARGV[i + 2]) - tonumber(ARGV[i + 1]))
  end
end
if longest > span then redis.call('SET', KEYS[4], string.format('%.17g', longest)) end
local drop = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[2], 'LIMIT', 0, ARGV[3])
local over = redis.call('ZCARD', KEYS[2]) - #drop - tonumber(ARGV[1])
if over > 0 then
  local last = #drop + math.min(over, tonumber(ARGV[3])) - 1
  for _, id in ipairs(redis.call('ZRANGE', KEYS[2], #drop, last)) do drop[#drop + 1] = id end
end
for _, id in ipairs(drop) do
  redis.call('HDEL', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('ZREM', KEYS[3], id)
end
return #drop
""",
    integer,
)

# KEYS: action_keys. ARGV: since, until ('-inf'/'+inf' when open), limit. The actions whose span overlaps
# [since, until], by start: those still running that started before since minus the longest finished span, then
# a scan of the starts from there to until keeping those that end at or after since.
_READ_ACTIONS_SCRIPT: Final = Script(
    """
local limit = tonumber(ARGV[3])
local low = '-inf'
if ARGV[1] ~= '-inf' then
  low = string.format('%.17g', tonumber(ARGV[1]) - tonumber(redis.call('GET', KEYS[4]) or '0'))
end
local ids = {}
if low ~= '-inf' then
  local early = {}
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '+inf', '+inf')) do
    local start = tonumber(redis.call('ZSCORE', KEYS[2], id))
    if start < tonumber(low) and (ARGV[2] == '+inf' or start <= tonumber(ARGV[2])) then
      early[#early + 1] = {start, id}
    end
  end
  table.sort(early, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
  for i = 1, math.min(#early, limit) do ids[#ids + 1] = early[i][2] end
end
local offset = 0
while #ids < limit do
  local page = redis.call('ZRANGEBYSCORE', KEYS[2], low, ARGV[2], 'LIMIT', offset, 500)
  for _, id in ipairs(page) do
    local ends = redis.call('ZSCORE', KEYS[3], id)
    if ARGV[1] == '-inf' or ends == 'inf' or tonumber(ends) >= tonumber(ARGV[1]) then
      ids[#ids + 1] = id
      if #ids == limit then break end
    end
  end
  if #page < 500 then break end
  offset = offset + 500
end
if #ids == 0 then return {} end
return redis.call('HMGET', KEYS[1], unpack(ids))
""",
    optional_texts,
)

# KEYS: action_keys. ARGV: since, until ('-inf'/'+inf' when open), limit. The same actions as the script above,
# newest start first: a scan of the starts down from until to since minus the longest finished span, then those
# still running that started before that, newest first.
_READ_NEWEST_ACTIONS_SCRIPT: Final = Script(
    """
local limit = tonumber(ARGV[3])
local low = '-inf'
if ARGV[1] ~= '-inf' then
  low = string.format('%.17g', tonumber(ARGV[1]) - tonumber(redis.call('GET', KEYS[4]) or '0'))
end
local ids = {}
local offset = 0
while #ids < limit do
  local page = redis.call('ZREVRANGEBYSCORE', KEYS[2], ARGV[2], low, 'LIMIT', offset, 500)
  for _, id in ipairs(page) do
    local ends = redis.call('ZSCORE', KEYS[3], id)
    if ARGV[1] == '-inf' or ends == 'inf' or tonumber(ends) >= tonumber(ARGV[1]) then
      ids[#ids + 1] = id
      if #ids == limit then break end
    end
  end
  if #page < 500 then break end
  offset = offset + 500
end
if #ids < limit and low ~= '-inf' then
  local early = {}
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '+inf', '+inf')) do
    local start = tonumber(redis.call('ZSCORE', KEYS[2], id))
    if start < tonumber(low) and (ARGV[2] == '+inf' or start <= tonumber(ARGV[2])) then
      early[#early + 1] = {start, id}
    end
  end
  table.sort(early, function(a, b) return a[1] > b[1] or (a[1] == b[1] and a[2] > b[2]) end)
  for i = 1, math.min(#early, limit - #ids) do ids[#ids + 1] = early[i][2] end
end
if #ids == 0 then return {} end
return redis.call('HMGET', KEYS[1], unpack(ids))
""",
    optional_texts,
)


def read_newest_actions(
    store: RecordStore, sandbox: str, since: float | None, until: float | None, limit: int
) -> tuple[list[ActionRecord], bool]:
    """The newest ``limit`` actions (by start) of those `read_actions` finds, oldest first, and whether older ones
    were left out (a timeline shows what happened last)."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    low = "-inf" if since is None else repr(since)
    high = "+inf" if until is None else repr(until)
    replies = store.redis.run(_READ_NEWEST_ACTIONS_SCRIPT, action_keys(sandbox), (low, high, limit + 1))
    found = [ActionRecord.from_json(json.loads(reply)) for reply in replies if reply is not None]
    return found[:limit][::-1], len(found) > limit


def write_actions(store: RecordStore, actions: Sequence[ActionRecord]) -> int:
    """Store ``actions`` (``received`` stamped with the store's clock when 0); idempotent by (sandbox, id): a
    re-sent action replaces the stored one. Returns how many were written. Not spooled: Redis errors propagate
    (`store.STORE_ERRORS`) and the reporter sends again. Retention: the store's, by start time and count."""
    now = store.now()
    by_sandbox: dict[str, list[ActionRecord]] = {}
    for action in actions:
        by_sandbox.setdefault(action.sandbox, []).append(action)
    if not by_sandbox:
        return 0
    oldest = repr(now - store.retention_max_age)
    calls: list[ScriptCall] = []
    for sandbox, group in by_sandbox.items():
        for start in range(0, len(group), ACTION_CHUNK):
            args: list[Arg] = [store.retention_max_len, oldest, TRIM_MAX]
            for action in group[start : start + ACTION_CHUNK]:
                data = action.to_json()
                if not action.received:
                    data["received"] = now
                ends = "inf" if action.end is None else repr(action.end)
                args += [action.id, repr(action.start), ends, json.dumps(data, separators=(",", ":"))]
            calls.append((action_keys(sandbox), args))
    store.redis.run_each(_WRITE_ACTIONS_SCRIPT, calls)
    return len(actions)


def read_actions(
    store: RecordStore, sandbox: str, since: float | None, until: float | None, limit: int = 1000
) -> list[ActionRecord]:
    """Actions of ``sandbox`` whose span overlaps ``[since, until]`` (a running one spans to +inf), by start time,
    the first ``limit``. One script on the server."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    low = "-inf" if since is None else repr(since)
    high = "+inf" if until is None else repr(until)
    replies = store.redis.run(_READ_ACTIONS_SCRIPT, action_keys(sandbox), (low, high, limit))
    return [ActionRecord.from_json(json.loads(reply)) for reply in replies if reply is not None]
