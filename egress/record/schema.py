"""The attempt record, schema version 1: one blocked, would-block or recorded attempt, as it is stored in Redis,
spooled to disk and returned by queries (the API's ``Attempt`` is this class). Pure: no I/O; ids are built from a
time and random bytes passed in (`new_id` is the one helper that asks the OS for them).

The one way from a gateway's decision to a record is `AttemptRecord.of` (a `DecidedFlow` and its verdict). The
field names and the values of ``transport``, ``category``, ``reason`` and ``action`` are part of the API (Redis,
JSON, logs): docs/records.md is their reference. Those four are closed sets, the enums the rest of egress decides
with; a record holding any other value is refused with an error naming the field. Version 1 may only grow by
adding optional fields; readers ignore fields they do not know.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from egress.decide import Enforcement, Reason
from egress.decisions import DecidedFlow
from egress.detect.base import Category, Transport
from egress.record import derived
from egress.record.printable import escape

SCHEMA_VERSION: Final = 1
DERIVED: Final = ("community_id", "timestamp", "severity", "signature_id")
"""Fields computed from the others on construction (`egress.record.derived`); added to version 1 in 0.2."""


class RecordCategory(enum.StrEnum):
    """What an attempt was: a detector's category (``mining``, ``crypto-node``, ``tunnel``), or ``policy``: no
    detector recognised it and the policy alone refused it."""

    # egress.detect.base.Category and "policy" (which no detector finds): an enum cannot extend another, so its
    # members are named again here, with its values; tests/record/test_schema.py checks that the two stay in step.
    MINING = Category.MINING.value
    CRYPTO_NODE = Category.CRYPTO_NODE.value
    TUNNEL = Category.TUNNEL.value
    POLICY = "policy"


_CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_ID: Final = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
_COMMUNITY_ID: Final = re.compile(r"1:[A-Za-z0-9+/]{27}=")
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
    """One blocked, would-block or recorded attempt (or ``count`` identical ones between first_ts and last_ts).

    Validated on construction: the enum fields also take their string values (and become the enum members); any
    other value is a `ValueError` naming the field."""

    id: str
    """Unique and time-sortable (`make_id`); an aggregate gets a new id of its own."""
    ts: float
    """Epoch seconds of the attempt (of the first attempt, for an aggregate)."""
    gateway: str
    """Name of the gateway that saw it."""
    sandbox: str
    """Policy sandbox name; ``""`` when the source belongs to no sandbox (a spoofed source)."""
    src: str
    """Source address."""
    sport: int
    """Source port (0 for icmp and for IP protocols without ports)."""
    dst: str
    """Destination address."""
    dport: int
    """Destination port (0 for icmp and for IP protocols without ports)."""
    transport: Transport
    """``tcp``, ``udp``, ``icmp`` or ``ip`` (another IP protocol: ``protocol`` names it, e.g. ``gre``)."""
    host: str
    """Host name asked for (SNI, Host, DNS question), ``""`` when there was none; a character that is not
    printable is written ``\\DDD`` (`egress.record.printable`: what a sandbox asks for never reaches a reader's
    terminal as a control sequence)."""
    category: RecordCategory
    """``mining``, ``tunnel``, ``crypto-node`` (a detector found it) or ``policy`` (the policy alone refused it)."""
    protocol: str
    """What was recognised (a detector's protocol label, e.g. ``stratum-v1``), or the transport when no detector
    recognised anything."""
    reason: Reason
    """Why: a value of ``egress.decide.Reason`` (e.g. ``mining``, ``not-allowlisted``, ``dns-refused``)."""
    detector: str
    """The detector module that recognised it (e.g. ``stratum``), or ``policy`` when none did."""
    rule: str
    """What decided: a policy ``rule_id`` (e.g. ``sandboxes.agents.detectors.mining``) or a fixed label of
    ``egress.decide``: ``default-deny`` (nothing allowed it), ``anti-spoofing``, ``doh-canary``."""
    action: Enforcement
    """``block``; ``would-block`` (a sandbox in report mode: the traffic passed); ``record`` (a detector set to
    record: the traffic passed). Never ``allow``: allowed traffic is not recorded."""
    evidence: str
    """Short printable excerpt of what matched (at most 160 characters)."""
    count: int = 1
    """How many identical attempts this record stands for."""
    first_ts: float = -1.0
    """Time of the first of the ``count`` attempts (defaults to ``ts``)."""
    last_ts: float = -1.0
    """Time of the last of the ``count`` attempts (defaults to ``ts``)."""
    schema: int = SCHEMA_VERSION
    """The record schema version: 1."""
    update_of: str = ""
    """``""`` for an attempt's record; for a count update, the id of the record whose ``count`` it adds to (its
    ``count``, ``first_ts`` and ``last_ts`` are the repeats it adds; reads fold it into that record)."""
    community_id: str = ""
    """Derived: the flow's Community ID v1 (``1:`` and 28 base64 characters; the hash Zeek, Suricata and Elastic
    give the same flow), ``""`` when the record cannot tell the flow (`egress.record.derived.flow_id`)."""
    timestamp: str = ""
    """Derived: ``ts`` as an RFC 3339 UTC time with microseconds (``2026-11-29T21:04:25.123456Z``)."""
    severity: str = ""
    """Derived: ``high`` (mining, tunnels), ``medium`` (evasions, crypto nodes) or ``low`` (the rest)."""
    signature_id: int = 0
    """Derived: a stable number (32 bits) per detector, protocol and reason, or per reason when the policy alone
    decided: eve.json's ``alert.signature_id`` (`egress.record.derived.signature_id`)."""

    def __post_init__(self) -> None:
        if isinstance(self.host, str) and not self.host.isprintable():  # a record read from before the escape too
            object.__setattr__(self, "host", escape(self.host))
        _derive(self)
        if self.first_ts < 0:
            object.__setattr__(self, "first_ts", self.ts)
        if self.last_ts < 0:
            object.__setattr__(self, "last_ts", self.ts)
        errors = _coerce_enums(self)
        errors += _problems(self)
        if errors:
            raise ValueError("invalid attempt record: " + "; ".join(errors))

    @classmethod
    def of(cls, flow: DecidedFlow, gateway: str, record_id: str) -> AttemptRecord:
        """The record of a decided flow (the recorder's one conversion); `ValueError` for an allowed one."""
        verdict, finding = flow.verdict, flow.verdict.finding
        if verdict.reason is None or verdict.action is Enforcement.ALLOW:
            raise ValueError(f"an allowed flow is not recorded ({flow.dst}:{flow.dport})")
        return cls(
            id=record_id,
            ts=flow.ts,
            gateway=gateway,
            sandbox=flow.sandbox,
            src=flow.src,
            sport=flow.sport,
            dst=flow.dst,
            dport=flow.dport,
            transport=Transport(flow.transport),
            host=flow.host,
            category=RecordCategory.POLICY if finding is None else RecordCategory(finding.category.value),
            protocol=(flow.protocol or flow.transport) if finding is None else finding.protocol,
            reason=verdict.reason,
            detector="policy" if finding is None else finding.detector,
            rule=verdict.rule,
            action=verdict.action,
            evidence=verdict.evidence,
            count=flow.count,
        )

    def to_json(self) -> dict[str, Any]:
        """JSON-ready mapping with native types (what the API, the CLI and the spool write), in field order."""
        data = {name: getattr(self, name) for name in _FIELD_NAMES}
        for name in _ENUMS:
            data[name] = data[name].value
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AttemptRecord:
        """Inverse of `to_json`; unknown keys are ignored, wrong types and values rejected (naming the field)."""
        if data.get("schema") != SCHEMA_VERSION:
            raise ValueError(f"unsupported attempt record schema {data.get('schema')!r}")
        values: dict[str, Any] = {}
        for name in _FIELD_NAMES:
            if name not in data:
                if name in _OPTIONAL:
                    continue
                raise ValueError(f"attempt record lacks {name}")
            value, kind = data[name], _FIELD_TYPES[name]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise ValueError(f"attempt record field {name} must be {kind.__name__}, got {value!r}")
            values[name] = value
        return cls(**values)


_FIELD_NAMES: Final = tuple(field.name for field in dataclasses.fields(AttemptRecord))
_OPTIONAL: Final = frozenset({"update_of", *DERIVED})
"""Fields added to version 1 after its first release: a record written before them lacks them."""
_ENUMS: Final[dict[str, type[enum.StrEnum]]] = {
    name: kind
    for name, kind in typing.get_type_hints(AttemptRecord).items()
    if isinstance(kind, type) and issubclass(kind, enum.StrEnum)
}
"""The closed fields and their enums, as annotated."""
_FIELD_TYPES: Final[dict[str, type]] = {
    name: str if name in _ENUMS else kind for name, kind in typing.get_type_hints(AttemptRecord).items()
}
"""The JSON type of each field (an enum field is a string in JSON)."""


def _derive(record: AttemptRecord) -> None:
    """Fill the derived fields that are empty from the others: a record written before they existed gets them
    on reading; a stored record keeps the ones it was written with (computing them again for every record read
    would double the cost of decoding). A copy made with `dataclasses.replace` that changes a flow or time field
    must pass the derived fields empty (`WITHOUT_DERIVED`)."""
    if not record.community_id:
        flow = derived.flow_id(
            record.src, record.sport, record.dst, record.dport, str(record.transport), record.protocol
        )
        object.__setattr__(record, "community_id", flow)
    if not record.timestamp and math.isfinite(record.ts) and 0 <= record.ts < derived.MAX_TS:
        object.__setattr__(record, "timestamp", derived.rfc3339(record.ts))
    if not record.severity:
        object.__setattr__(record, "severity", derived.severity(str(record.category), str(record.reason)))
    if not record.signature_id:
        name = derived.signature(record.detector, record.protocol, str(record.reason))
        object.__setattr__(record, "signature_id", derived.signature_id(name))


WITHOUT_DERIVED: Final[dict[str, Any]] = {"community_id": "", "timestamp": "", "severity": "", "signature_id": 0}
"""Keyword arguments for `dataclasses.replace` that let the copy derive its fields anew."""


def _coerce_enums(record: AttemptRecord) -> list[str]:
    """Turn the string values of the enum fields into their members; name each field whose value is none."""
    errors = []
    for name, kind in _ENUMS.items():
        value = getattr(record, name)
        if isinstance(value, kind):
            continue
        try:
            object.__setattr__(record, name, kind(value))
        except ValueError:
            errors.append(f"{name} {value!r} is not one of {', '.join(kind)}")
    if record.action is Enforcement.ALLOW:
        errors.append("action 'allow' is not recorded (block, would-block, record)")
    return errors


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
    if record.count < 1:
        errors.append(f"count {record.count} is below 1")
    if record.update_of and not _ID.fullmatch(record.update_of):
        errors.append(f"update_of {record.update_of!r} is not a 26-character id")
    if record.schema != SCHEMA_VERSION:
        errors.append(f"schema {record.schema} is not {SCHEMA_VERSION}")
    return errors + _derived_problems(record)


def _derived_problems(record: AttemptRecord) -> list[str]:
    errors = []
    if record.community_id and not _COMMUNITY_ID.fullmatch(record.community_id):
        errors.append(f"community_id {record.community_id!r} is not a version 1 Community ID")
    if record.severity not in derived.SEVERITIES:
        errors.append(f"severity {record.severity!r} is not one of {', '.join(derived.SEVERITIES)}")
    if not 0 < record.signature_id < 1 << 32:
        errors.append(f"signature_id {record.signature_id} is not a 32-bit signature id")
    return errors
