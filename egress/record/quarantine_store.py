"""Quarantines in Redis: the findings counted towards them (shared by every gateway and component), the sandboxes
cut off now, and every step as an event. The gateways (`egress.gateway.quarantine`), ``egress quarantine`` and
``/v1/quarantine`` read and write them here, through `RedisFacade`.

Keys (one hash tag, so each script's keys share a slot on a Redis Cluster; docs/quarantine.md):

- ``{egress:quarantine}:hits:SANDBOX`` sorted set: one member per finding (score: its epoch time), trimmed to the
  longest window asked and expiring with it;
- ``{egress:quarantine}:active`` hash: sandbox → JSON of its `Entry` (present: cut off on every gateway);
- ``{egress:quarantine}:events`` list: JSON of each `Event`, newest first, the last `KEEP_EVENTS` kept.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Final, Literal

from egress.record.redis_facade import STORE_ERRORS, RedisFacade, Script, integer, optional_text, text

__all__ = ["STORE_ERRORS", "Entry", "Event", "QuarantineStore"]

TAG: Final = "{egress:quarantine}"
ACTIVE_KEY: Final = f"{TAG}:active"
EVENTS_KEY: Final = f"{TAG}:events"
KEEP_EVENTS: Final = 1000


def hits_key(sandbox: str) -> str:
    return f"{TAG}:hits:{sandbox}"


_HIT: Final = Script(
    """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
for i = 4, #ARGV do redis.call('ZADD', KEYS[1], now, ARGV[3] .. ':' .. ARGV[i]) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('EXPIRE', KEYS[1], math.ceil(window) + 1)
return redis.call('ZCARD', KEYS[1])
""",
    integer,
)
"""KEYS: the sandbox's hits. ARGV: now, window seconds, a member prefix unique to the caller, then one suffix per
finding. Returns the findings within the window, every gateway's."""

_QUARANTINE: Final = Script(
    """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[3])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[4]) - 1)
return 1
""",
    integer,
)
"""KEYS: active, events. ARGV: sandbox, its entry's JSON, the event's JSON, events kept. 1 when this call cut it
off, 0 when it already was (another gateway was first)."""

_RELEASE: Final = Script(
    """
local entry = redis.call('HGET', KEYS[1], ARGV[1])
if not entry then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[3])
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
return entry
""",
    optional_text,
)
"""KEYS: active, events, the sandbox's hits. ARGV: sandbox, the event's JSON, events kept. The released entry's
JSON, or nil when the sandbox was not quarantined. Its hits go too: a release starts the count afresh."""


def _texts(value: object) -> list[str]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list, got {value!r:.80}")
    return [text(item) for item in value]


_EVENTS: Final = Script("return redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)", _texts)


@dataclass(frozen=True, slots=True)
class Entry:
    """A sandbox cut off."""

    sandbox: str
    since: float
    """When (epoch seconds)."""
    gateway: str
    """The gateway whose count reached the threshold."""
    reason: str
    """What tripped it: ``3 findings (mining, tunnel) within 600 s``."""
    findings: int

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: str) -> Entry:
        data = json.loads(raw)
        return cls(str(data["sandbox"]), float(data["since"]), str(data["gateway"]), str(data["reason"]),
                   int(data["findings"]))  # fmt: skip


@dataclass(frozen=True, slots=True)
class Event:
    """One step: a quarantine (by a gateway) or a release (by a person or token)."""

    event: Literal["quarantine", "release"]
    sandbox: str
    time: float
    who: str
    """The gateway for a quarantine; the API token's name or the CLI's user for a release."""
    reason: str = ""

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: str) -> Event:
        data = json.loads(raw)
        kind = data["event"]
        if kind not in ("quarantine", "release"):
            raise ValueError(f"unknown quarantine event {kind!r}")
        return cls(kind, str(data["sandbox"]), float(data["time"]), str(data["who"]), str(data.get("reason", "")))


class QuarantineStore:
    """Calls raise one of `STORE_ERRORS` when Redis does not answer."""

    def __init__(self, redis: RedisFacade, clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self._clock = clock

    @classmethod
    def from_url(cls, url: str, *, socket_timeout: float = 2.0) -> QuarantineStore:
        return cls(RedisFacade.from_url(url, socket_timeout=socket_timeout))

    def close(self) -> None:
        self.redis.close()

    def hit(self, sandbox: str, caller: str, suffixes: list[str], window: float) -> int:
        """Count findings (one per suffix; ``caller:suffix`` unique) at now; the findings within ``window``."""
        args: list[str | int | float] = [self._clock(), window, caller, *suffixes]
        return self.redis.run(_HIT, [hits_key(sandbox)], args)

    def quarantine(self, entry: Entry) -> bool:
        """Cut ``entry.sandbox`` off fleet-wide; False when it already was."""
        event = Event("quarantine", entry.sandbox, entry.since, entry.gateway, entry.reason)
        args: list[str | int] = [entry.sandbox, json.dumps(entry.to_json()), json.dumps(event.to_json()), KEEP_EVENTS]
        return self.redis.run(_QUARANTINE, [ACTIVE_KEY, EVENTS_KEY], args) == 1

    def release(self, sandbox: str, who: str) -> Entry | None:
        """Undo the quarantine of ``sandbox`` (every gateway follows within a second); None if it was not cut off."""
        event = Event("release", sandbox, self._clock(), who)
        args: list[str | int] = [sandbox, json.dumps(event.to_json()), KEEP_EVENTS]
        raw = self.redis.run(_RELEASE, [ACTIVE_KEY, EVENTS_KEY, hits_key(sandbox)], args)
        return None if raw is None else Entry.from_json(raw)

    def active(self) -> dict[str, Entry]:
        """The sandboxes cut off now."""
        return {sandbox: Entry.from_json(raw) for sandbox, raw in self.redis.hgetall(ACTIVE_KEY).items()}

    def events(self, limit: int = 100) -> list[Event]:
        """The latest steps, newest first."""
        return [Event.from_json(raw) for raw in self.redis.run(_EVENTS, [EVENTS_KEY], [max(limit, 1)])]
