"""The Redis layout of attempt records (docs/records.md): key names, how a batch is cut into stream entries, and
how an entry's records are encoded and decoded. Pure: no I/O; `delivery` writes with it, `walk` and `query` read.

A sandbox's records live in stream entries of up to `CHUNK` records each, all within `SPAN` seconds of the
entry's first record; the entry's value is the records as one JSON array, each element exactly the record's
documented JSON (`AttemptRecord.to_json`, what ``egress events --json`` prints). The time index scores an entry
with the time of its first record, so a record at time ``t`` is in an entry scored within ``[t - SPAN, t]``.
"""

from __future__ import annotations

import bisect
import functools
import json
import operator
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from typing import Final

import msgspec

from egress.record.schema import AttemptRecord, RecordCategory

LAYOUT_VERSION: Final = 2
"""1: one stream entry and one index member per record (egress 0.1 before the 2026-11-27 change); 2: entries."""
CHUNK: Final = 256
"""Records per stream entry at most: bounds one entry's size (about 450 bytes a record) and one script's work."""
SPAN: Final = 20.0
"""Seconds from an entry's first record to its last at most (records of one entry are sorted by time). A batch
usually spans a tick plus the aggregation window (10 s); a wider one is cut into more entries. Readers look this
far before a window, so it is kept small."""
SANDBOXES_KEY: Final = "egress:sandboxes"
ENTRY_COUNT: Final = "n"
ENTRY_RECORDS: Final = "records"

_TIME: Final = operator.attrgetter("ts")
_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder(list[AttemptRecord])


@functools.lru_cache(maxsize=4096)  # a stats query names a few hundred keys of each sandbox
def sandbox_tag(sandbox: str) -> str:
    """The sandbox name as it appears inside keys: escaped so that it cannot end the hash tag early."""
    return urllib.parse.quote(sandbox, safe="._-~") or "%"  # "%" alone: no escaped name is that


def _prefix(sandbox: str) -> str:
    return f"egress:{{{sandbox_tag(sandbox)}}}"


def stream_key(sandbox: str) -> str:
    """The sandbox's stream: one entry per delivered chunk, in arrival order."""
    return f"{_prefix(sandbox)}:attempts"


def index_key(sandbox: str) -> str:
    """The sandbox's time index: member = stream entry id, score = time of the entry's first record."""
    return f"{_prefix(sandbox)}:by-time"


def state_key(sandbox: str) -> str:
    """A hash of the stream's bookkeeping: ``records`` and ``findings`` (how many records it holds, and of those
    findings: what the size retention compares, per kind), ``head-p`` and ``head-f`` (each kind's trim cursor),
    ``age-check`` (the Redis time, in ms, when its oldest entry reaches the age retention), and what the trims
    dropped (``trimmed-size``, ``trimmed-age``, ``trimmed-size-findings``, ``trimmed-age-findings``:
    `egress.record.retained`)."""
    return f"{_prefix(sandbox)}:state"


def seen_key(sandbox: str, first_id: str) -> str:
    """Set when the entry starting with record ``first_id`` is stored: a replayed batch is not stored twice."""
    return f"{_prefix(sandbox)}:seen:{first_id}"


def counts_key(sandbox: str, unit: int, period: int) -> str:
    """Attempts of the sandbox counted at write time over one period of ``unit`` seconds (60, 3600 or 86400;
    period = ``int(ts // unit)``): a hash ``<category>|<reason>`` -> attempts (`egress.record.stats`)."""
    return f"{_prefix(sandbox)}:counts:{unit}:{period}"


def destinations_key(sandbox: str, unit: int, period: int) -> str:
    """Like `counts_key`, by destination: a hash ``<host, or the address when there is none>`` -> attempts."""
    return f"{_prefix(sandbox)}:destinations:{unit}:{period}"


def action_keys(sandbox: str) -> tuple[str, str, str, str]:
    """The agent-action keys of a sandbox (docs/records.md): hash id -> JSON, sorted sets by start and by end
    (``inf`` while running), and the longest finished span seen (what bounds an overlap query)."""
    prefix = _prefix(sandbox)
    return f"{prefix}:actions", f"{prefix}:actions-by-start", f"{prefix}:actions-by-end", f"{prefix}:actions-span"


def is_finding(record: AttemptRecord) -> bool:
    """Whether ``record`` is a detector's finding (mining, tunnel, crypto node) rather than the policy's refusal
    alone: findings are kept in entries of their own, under a size retention of their own (docs/records.md)."""
    return record.category != RecordCategory.POLICY


def entry_chunks(records: Sequence[AttemptRecord], size: int = CHUNK) -> Iterator[list[AttemptRecord]]:
    """``records`` (one sandbox's), the findings apart from the policy records (`is_finding`: an entry holds one
    kind, findings' entries first), each kind sorted by time (stable: equal times keep their order) and cut into
    entries of at most ``size`` records spanning at most `SPAN` seconds. A batch thus makes at most two entries
    more than its times and size need, however its kinds interleave (one entry per run of a kind made an agent
    that alternates them cost a script per record). Deterministic: the same batch always gives the same entries
    (what makes a replay's `seen_key` the same)."""
    ordered = sorted(records, key=_TIME)
    for kind in (True, False):
        group = [record for record in ordered if is_finding(record) is kind]
        times = [record.ts for record in group]
        start = 0
        while start < len(group):
            end = min(start + max(size, 1), bisect.bisect_right(times, times[start] + SPAN, start + 1))
            yield group[start:end]
            start = end


def encode_entry(records: Sequence[AttemptRecord]) -> bytes:
    """The records as one JSON array of their documented JSON objects (UTF-8)."""
    try:
        return _ENCODER.encode(records)  # dataclass fields in declaration order: the documented field order
    except UnicodeEncodeError:  # a string that is not valid Unicode (a lone surrogate): escape it, do not fail
        return json.dumps([record.to_json() for record in records], separators=(",", ":")).encode()


def decode_entry(fields: Mapping[str, str]) -> list[AttemptRecord]:
    """The records of a stream entry's fields; [] for an entry from another layout (see `decode_payload`)."""
    payload = fields.get(ENTRY_RECORDS)
    return [] if payload is None else decode_payload(payload)


def decode_payload(payload: str | bytes) -> list[AttemptRecord]:
    """The records of an entry's ``records`` field. Checked as `AttemptRecord` checks itself (a value outside its
    field's enum included); a malformed entry raises ValueError naming it."""
    try:
        return _DECODER.decode(payload)
    except msgspec.DecodeError:  # a lone surrogate escaped by `encode_entry`, which msgspec refuses; or a bad
        return [AttemptRecord.from_json(item) for item in json.loads(payload)]  # value, which this error names


class Counted(msgspec.Struct, frozen=True):
    """The fields of a record that counting needs, read without the others and unchecked (a count by reason
    shows a stored value as it is)."""

    ts: float
    count: int
    sandbox: str
    category: str
    reason: str
    host: str
    dst: str


_COUNTED: Final = msgspec.json.Decoder(list[Counted])


def decode_counted(payload: str | bytes) -> list[Counted]:
    """An entry's records as `Counted`: for counting."""
    try:
        return _COUNTED.decode(payload)
    except msgspec.DecodeError:  # a lone surrogate escaped by `encode_entry`
        return msgspec.convert(json.loads(payload), list[Counted])
