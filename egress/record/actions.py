"""The agent action record, schema version 1: one thing the agent did (a tool call, a shell command, ...) as the
sandbox harness reports it. Pure: no I/O. Stored in Redis by `egress.record.query.write_actions`; docs/records.md
is the reference for the fields.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

ACTION_SCHEMA_VERSION: Final = 1
KINDS: Final = ("tool_call", "shell_command", "http_request", "file_write", "other")
"""The usual kinds; any other ``[a-z_]{1,40}`` token is accepted too."""
COMMAND_MAX: Final = 4096
"""Characters of ``command`` kept; a longer one is cut (and ends with ``…``)."""
NAME_MAX: Final = 256
"""Longest sandbox name and action id."""
MAX_TIME: Final = 253402300799.0
"""The last second of year 9999: later times are refused as nonsense."""

_KIND: Final = re.compile(r"[a-z_]{1,40}")
_FIELDS: Final = ("sandbox", "id", "kind", "command", "start", "end", "received", "schema")


@dataclass(frozen=True, slots=True)
class ActionRecord:
    """One agent action; ``end`` is None while it runs. Validated on construction (`ValueError` naming the field)."""

    sandbox: str
    """Policy sandbox name the action ran in (not empty)."""
    id: str
    """The harness's action id, unique per sandbox: a re-sent action with the same id replaces the stored one."""
    kind: str
    """``tool_call``, ``shell_command``, ``http_request``, ``file_write``, ``other``, or another ``[a-z_]`` token."""
    command: str
    """The command line, or the tool name and its arguments, as text (cut to `COMMAND_MAX` characters)."""
    start: float
    """Epoch seconds when the action started."""
    end: float | None
    """Epoch seconds when it ended (``>= start``); None while it is still running."""
    received: float = 0.0
    """Epoch seconds when the gateway's API got it (0: not stamped)."""
    schema: int = ACTION_SCHEMA_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.command, str) and len(self.command) > COMMAND_MAX:
            object.__setattr__(self, "command", self.command[: COMMAND_MAX - 1] + "…")
        for name in ("start", "end", "received"):
            value = getattr(self, name)
            if isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))
        errors = _problems(self)
        if errors:
            raise ValueError("invalid action: " + "; ".join(errors))

    @property
    def span_end(self) -> float:
        """``end``, or +inf while the action runs."""
        return math.inf if self.end is None else self.end

    def to_json(self) -> dict[str, Any]:
        """JSON-ready mapping (what Redis, the API and the CLI hold)."""
        return {name: getattr(self, name) for name in _FIELDS}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ActionRecord:
        """Inverse of `to_json`. Unknown fields are rejected; ``received`` and ``schema`` may be left out."""
        if not isinstance(data, Mapping):
            raise ValueError(f"an action is a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise ValueError(f"invalid action: unknown field(s) {', '.join(map(str, unknown))}")
        missing = [name for name in ("sandbox", "id", "kind", "command", "start") if name not in data]
        if missing:
            raise ValueError(f"invalid action: missing field(s) {', '.join(missing)}")
        schema = data.get("schema", ACTION_SCHEMA_VERSION)
        if schema != ACTION_SCHEMA_VERSION or isinstance(schema, bool):
            raise ValueError(f"invalid action: schema {schema!r} is not {ACTION_SCHEMA_VERSION}")
        return cls(
            sandbox=data["sandbox"],
            id=data["id"],
            kind=data["kind"],
            command=data["command"],
            start=data["start"],
            end=data.get("end"),
            received=data.get("received", 0.0),
        )


def _problems(action: ActionRecord) -> list[str]:
    errors = []
    for name in ("sandbox", "id"):
        value = getattr(action, name)
        if not isinstance(value, str):
            errors.append(f"{name} must be a string, got {value!r}")
        elif not value or len(value) > NAME_MAX or not value.isprintable():
            errors.append(f"{name} {value[:40]!r} must be 1 to {NAME_MAX} printable characters")
    if not isinstance(action.kind, str) or not _KIND.fullmatch(action.kind):
        errors.append(f"kind {action.kind!r} must be a token of 1 to 40 of [a-z_] (e.g. {', '.join(KINDS)})")
    if not isinstance(action.command, str):
        errors.append(f"command must be a string, got {type(action.command).__name__}")
    for name in ("start", "end", "received"):
        value = getattr(action, name)
        if value is None and name == "end":
            continue
        if not isinstance(value, float):
            errors.append(f"{name} must be a number of epoch seconds, got {value!r}")
        elif not math.isfinite(value) or not 0 <= value <= MAX_TIME:
            errors.append(f"{name} {value!r} is not a time")
    if isinstance(action.start, float) and isinstance(action.end, float) and action.end < action.start:
        errors.append(f"end {action.end!r} is before start {action.start!r}")
    if action.schema != ACTION_SCHEMA_VERSION:
        errors.append(f"schema {action.schema!r} is not {ACTION_SCHEMA_VERSION}")
    return errors
