"""The attempt record, schema version 1: one blocked (or would-block) attempt, as it is stored in Redis, spooled
to disk and returned by queries. Pure: no I/O, ids are built from a time and random bytes passed in.

The field names and the string values of ``transport``, ``category`` and ``action`` are part of the API (Redis,
JSON, logs): docs/records.md is their reference. Version 1 may only grow by adding optional fields; readers ignore
fields they do not know.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from egress.detect.base import Category

SCHEMA_VERSION: Final = 1

TRANSPORTS: Final = ("tcp", "udp", "icmp")
CATEGORIES: Final = (*(category.value for category in Category), "policy")
"""The detector categories, plus ``policy`` for attempts refused by the allowlist alone."""
ACTIONS: Final = ("block", "would-block", "record")
"""``would-block``: a sandbox in report mode, traffic passed. ``record``: a detector set to record; it passed."""

_REASON: Final = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
"""Reasons are the values of ``egress.decide.Reason`` (a closed set owned there); here only their shape is checked."""

_CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ID: Final = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
ID_RANDOM_BYTES: Final = 10


def make_id(ts: float, random: bytes) -> str:
    """A 26-character ULID-style id: 48 bits of milliseconds then 80 random bits, Crockford base32.

    Ids sort by time (to the millisecond) as plain strings; two ids made in the same millisecond differ by the
    random part with probability 1 - 2**-80.
    """
    if len(random) != ID_RANDOM_BYTES:
        raise ValueError(f"make_id needs {ID_RANDOM_BYTES} random bytes, got {len(random)}")
    if not math.isfinite(ts):
        raise ValueError(f"make_id: ts {ts!r} is not a time")
    ms = max(0, min(int(ts * 1000), (1 << 48) - 1))
    value = (ms << 80) | int.from_bytes(random, "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_id(ts: float) -> str:
    """`make_id` with random bytes from the operating system (the one impure helper here, for callers)."""
    return make_id(ts, os.urandom(ID_RANDOM_BYTES))


def id_time(record_id: str) -> float:
    """The time (seconds, millisecond precision) encoded in an id made by `make_id`."""
    value = 0
    for char in record_id[:10]:
        value = value * 32 + _CROCKFORD.index(char)
    return value / 1000  # 26 chars carry 130 bits: 2 zero bits, 48 of milliseconds, 80 random


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One blocked or would-block attempt (or ``count`` identical ones aggregated between first_ts and last_ts)."""

    id: str
    """Unique and time-sortable (`make_id`); an aggregate gets a new id of its own."""
    ts: float
    """Epoch seconds of the attempt (of the first attempt, for an aggregate)."""
    gateway: str
    """Name of the gateway that saw it."""
    sandbox: str
    """Policy sandbox name; ``""`` when the source belongs to no sandbox (a spoofed source)."""
    src: str
    sport: int
    dst: str
    dport: int
    transport: str
    """``tcp``, ``udp`` or ``icmp`` (ports are 0 for icmp)."""
    host: str
    """Host name asked for (SNI, Host, DNS question), ``""`` when there was none."""
    category: str
    """``mining``, ``tunnel``, ``crypto-node`` (a detector found it) or ``policy`` (not on the allowlist)."""
    protocol: str
    """What was recognised (a detector's protocol label, e.g. ``stratum-v1``), or the transport for policy blocks."""
    reason: str
    """A value of ``egress.decide.Reason``."""
    detector: str
    """Detector module that matched, ``""`` for policy blocks."""
    rule: str
    """The policy rule that decided (``rule_id``), ``""`` for the default deny."""
    action: str
    """``block`` or ``would-block``."""
    evidence: str
    """Short printable excerpt of what matched."""
    count: int = 1
    """How many identical attempts this record stands for."""
    first_ts: float = -1.0
    """Time of the first of the ``count`` attempts (defaults to ``ts``)."""
    last_ts: float = -1.0
    """Time of the last of the ``count`` attempts (defaults to ``ts``)."""
    schema: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.first_ts < 0:
            object.__setattr__(self, "first_ts", self.ts)
        if self.last_ts < 0:
            object.__setattr__(self, "last_ts", self.ts)
        errors = _problems(self)
        if errors:
            raise ValueError("invalid attempt record: " + "; ".join(errors))

    def to_json(self) -> dict[str, Any]:
        """JSON-ready mapping with native types (what the API, the CLI and the spool write)."""
        return {name: getattr(self, name) for name in _FIELD_NAMES}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AttemptRecord:
        """Inverse of `to_json`; unknown keys are ignored, wrong types rejected."""
        if data.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"unsupported attempt record schema {data.get('schema')!r}")
        values: dict[str, Any] = {}
        for name in _FIELD_NAMES:
            if name not in data:
                raise ValueError(f"attempt record lacks {name}")
            value, kind = data[name], _FIELD_TYPES[name]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"attempt record field {name} must be {kind.__name__}, got {value!r}")
            values[name] = value
        return cls(**values)


_FIELD_NAMES: Final = tuple(field.name for field in dataclasses.fields(AttemptRecord))
_FIELD_TYPES: Final[dict[str, type]] = {
    field.name: {"str": str, "int": int, "float": float}[str(field.type)] for field in dataclasses.fields(AttemptRecord)
}


def _problems(record: AttemptRecord) -> list[str]:
    errors = []
    if not _ID.fullmatch(record.id):
        errors.append(f"id {record.id!r} is not a 26-character id")
    for name in ("ts", "first_ts", "last_ts"):
        value = getattr(record, name)
        if not math.isfinite(value) or value < 0:
            errors.append(f"{name} {value!r} is not a time")
    if record.first_ts > record.last_ts:
        errors.append(f"first_ts {record.first_ts} is after last_ts {record.last_ts}")
    for name in ("sport", "dport"):
        if not 0 <= getattr(record, name) <= 65535:
            errors.append(f"{name} {getattr(record, name)} is not a port")
    if record.transport not in TRANSPORTS:
        errors.append(f"transport {record.transport!r} not in {TRANSPORTS}")
    if record.category not in CATEGORIES:
        errors.append(f"category {record.category!r} not in {CATEGORIES}")
    if record.action not in ACTIONS:
        errors.append(f"action {record.action!r} not in {ACTIONS}")
    if not _REASON.fullmatch(record.reason):
        errors.append(f"reason {record.reason!r} is not a reason value")
    if record.count < 1:
        errors.append(f"count {record.count} is below 1")
    if record.schema != SCHEMA_VERSION:
        errors.append(f"schema {record.schema} is not {SCHEMA_VERSION}")
    return errors
