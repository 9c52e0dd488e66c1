"""The fleet's policy in Redis: every applied version (hash, time, who, the text), which one is applied now, and
what each gateway runs. `egress rules apply|history|rollback`, ``/v1/policy`` and every gateway's follower
(`egress.gateway.policy_follow`) read and write it here, through `RedisFacade`.

Keys (one hash tag, so each script's keys share a slot on a Redis Cluster; docs/rules-lifecycle.md):

- ``{egress:policy}:applied`` hash: ``seq`` (the last version number given out), and the applied version's
  ``version`` and ``meta`` (its JSON, as in the history);
- ``{egress:policy}:history`` hash: version number → JSON of its `StoredVersion` without the text;
- ``{egress:policy}:texts`` hash: version number → the policy's text (UTF-8, as applied);
- ``{egress:policy}:gateways`` hash: gateway name → JSON of its `GatewayReport`.

History is append-only: a rollback is a new version with the old text (``rollback_of`` says which). The oldest
versions beyond `KEEP` are dropped when a new one is written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Final, Literal

from egress.record.redis_facade import STORE_ERRORS, RedisFacade, Script, integer, optional_text

__all__ = ["STORE_ERRORS", "GatewayReport", "PolicyHistory", "StoredVersion"]

TAG: Final = "{egress:policy}"
APPLIED_KEY: Final = f"{TAG}:applied"
HISTORY_KEY: Final = f"{TAG}:history"
TEXTS_KEY: Final = f"{TAG}:texts"
GATEWAYS_KEY: Final = f"{TAG}:gateways"
KEEP: Final = 200
"""Versions kept (with their texts); older ones are dropped as new ones are applied."""

State = Literal["applied", "failed", "local"]
"""What a gateway says of itself: it runs the fleet's applied version (``applied``); it could not apply the
fleet's version and keeps the one it ran (``failed``, with the error); it runs its own ``--policy`` file, which is
not the fleet's applied version (``local``: started from it and Redis has no version yet, or the operator
reloaded it with SIGHUP)."""

_RECORD: Final = Script(
    """
local n = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[2], n, ARGV[1])
redis.call('HSET', KEYS[3], n, ARGV[2])
redis.call('HSET', KEYS[1], 'version', n, 'meta', ARGV[1])
local keep = tonumber(ARGV[3])
if n > keep then
  redis.call('HDEL', KEYS[2], n - keep)
  redis.call('HDEL', KEYS[3], n - keep)
end
return n
""",
    integer,
)
"""KEYS: applied, history, texts. ARGV: the version's JSON (without its number: the field is the number), its
text, and how many versions to keep. (The JSON is made in Python: Lua's cjson would
round the time to 14 digits.)"""

_FIELD: Final = Script("return redis.call('HGET', KEYS[1], ARGV[1])", optional_text)
_SET_FIELD: Final = Script("return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])", integer)


def version_label(digest: str) -> str:
    """How logs and reports name a policy version: ``sha256:`` and the first 16 hex digits of its digest."""
    return f"sha256:{digest[:16]}"


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """One applied version of the fleet's policy."""

    version: int
    """Numbered from 1 in the order they were applied."""
    digest: str
    """Hex SHA-256 of the text's UTF-8 bytes (what gateways log as ``sha256:`` and 16 digits)."""
    time: float
    """When it was applied (epoch seconds)."""
    who: str
    """Who applied it: the API token's name, or the CLI's user."""
    source: str
    """Where the text came from (the file applied, ``api``)."""
    rollback_of: int | None = None
    """For a rollback: the version whose text this is."""

    @property
    def label(self) -> str:
        return version_label(self.digest)

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, number: int, raw: str) -> StoredVersion:
        """Version ``number`` from its history field's JSON."""
        data = json.loads(raw)
        rollback = data.get("rollback_of")
        return cls(
            version=number,
            digest=str(data["digest"]),
            time=float(data["time"]),
            who=str(data["who"]),
            source=str(data["source"]),
            rollback_of=None if rollback is None else int(rollback),
        )


@dataclass(frozen=True, slots=True)
class GatewayReport:
    """What one gateway runs, as it last said."""

    gateway: str
    state: State
    digest: str
    """The digest of the policy it runs."""
    version: int | None
    """The fleet version it runs (None: its own file, which is no fleet version)."""
    time: float
    """When it said so (epoch seconds)."""
    wanted: int | None = None
    """The fleet version it last tried to apply (``failed``: the one it could not)."""
    error: str = ""
    """Why it could not apply ``wanted`` (``failed``)."""

    @property
    def label(self) -> str:
        return version_label(self.digest)

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: str) -> GatewayReport:
        data = json.loads(raw)
        state = data["state"]
        if state not in ("applied", "failed", "local"):
            raise ValueError(f"unknown gateway state {state!r}")
        version, wanted = data.get("version"), data.get("wanted")
        return cls(
            gateway=str(data["gateway"]),
            state=state,
            digest=str(data["digest"]),
            version=None if version is None else int(version),
            time=float(data["time"]),
            wanted=None if wanted is None else int(wanted),
            error=str(data.get("error", "")),
        )


class PolicyHistory:
    """The fleet's policy versions in one Redis (or Cluster); calls raise one of `STORE_ERRORS` when Redis does
    not answer."""

    def __init__(self, redis: RedisFacade, clock: Callable[[], float] = time.time, keep: int = KEEP) -> None:
        if keep < 1:
            raise ValueError("keep at least one version")
        self.redis = redis
        self._clock = clock
        self.keep = keep

    @classmethod
    def from_url(cls, url: str, *, socket_timeout: float = 5.0) -> PolicyHistory:
        """A history on its own connection (``redis+cluster://`` for a Cluster); a policy text may be MBs, hence
        the longer timeout than the records'."""
        return cls(RedisFacade.from_url(url, socket_timeout=socket_timeout))

    def close(self) -> None:
        self.redis.close()

    def record(self, text: str, digest: str, who: str, source: str, rollback_of: int | None = None) -> StoredVersion:
        """Store ``text`` as the new applied version (the caller validated it); return it with its number."""
        now = self._clock()
        meta = {"digest": digest, "time": now, "who": who, "source": source, "rollback_of": rollback_of}
        keys = [APPLIED_KEY, HISTORY_KEY, TEXTS_KEY]
        args: list[str | int] = [json.dumps(meta), text, self.keep]
        number = self.redis.run(_RECORD, keys, args)
        return StoredVersion(number, digest, now, who, source, rollback_of)

    def applied(self) -> StoredVersion | None:
        """The applied version (without its text), or None when none was ever applied."""
        fields = self.redis.hgetall(APPLIED_KEY)
        if "version" not in fields:
            return None
        return StoredVersion.from_json(int(fields["version"]), fields["meta"])

    def version(self, number: int) -> StoredVersion | None:
        """Version ``number`` (without its text), or None when it is unknown or no longer kept."""
        raw = self.redis.run(_FIELD, [HISTORY_KEY], [str(number)])
        return None if raw is None else StoredVersion.from_json(number, raw)

    def text(self, number: int) -> str | None:
        """The text of version ``number``, or None when it is unknown or no longer kept."""
        return self.redis.run(_FIELD, [TEXTS_KEY], [str(number)])

    def history(self) -> list[StoredVersion]:
        """Every kept version, newest first (without texts)."""
        fields = self.redis.hgetall(HISTORY_KEY)
        versions = [StoredVersion.from_json(int(number), raw) for number, raw in fields.items()]
        return sorted(versions, key=lambda stored: stored.version, reverse=True)

    def report(self, report: GatewayReport) -> None:
        """Say what ``report.gateway`` runs (replaces its last report)."""
        self.redis.run(_SET_FIELD, [GATEWAYS_KEY], [report.gateway, json.dumps(report.to_json())])

    def gateways(self) -> list[GatewayReport]:
        """Every gateway's last report, by name."""
        reports = [GatewayReport.from_json(raw) for raw in self.redis.hgetall(GATEWAYS_KEY).values()]
        return sorted(reports, key=lambda report: report.gateway)
