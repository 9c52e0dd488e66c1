"""The API's JSON answers, encoded by msgspec straight from the records.

A route that answers records returns `json_response` of a body holding `AttemptRecord` and `ActionRecord` values
themselves: msgspec writes a dataclass's fields in declaration order and an enum as its value, which is exactly the
record's documented JSON (``to_json``, what the store holds). The route keeps its ``response_model``, which
describes the answer in the OpenAPI document; FastAPI does not validate or serialize a `Response` a route returns,
so the records are not rebuilt as pydantic objects (their checks run again) and then encoded a second time: that
round trip was most of the CPU a list or a timeline cost.

A record is encoded once per process, not once per answer (`raw`): the records a list or a timeline answers come
from the read cache (`egress.record.read_cache`), the same objects again and again while dashboards poll, so each
one's JSON is kept beside it and spliced into the answer as it is (`msgspec.Raw`); encoding the records was most
of what a 500-item timeline cost once they were no longer rebuilt.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Final

import msgspec
from fastapi.responses import Response

from egress.record.actions import ActionRecord
from egress.record.read_cache import MAX_RECORDS
from egress.record.schema import AttemptRecord

_ENCODER: Final = msgspec.json.Encoder()


def encode(body: object) -> bytes:
    """``body`` as compact UTF-8 JSON. A string that is not valid Unicode (a lone surrogate, which a record's
    evidence may hold) is written as its ``\\u`` escape rather than failing the answer."""
    try:
        return _ENCODER.encode(body)
    except UnicodeEncodeError:
        return json.dumps(msgspec.to_builtins(body), separators=(",", ":")).encode()


class EncodedRecords:
    """Each record's JSON, kept by the record object's identity (records are frozen: their JSON never changes),
    at most ``size``; the oldest kept go first. Keeps the record itself alive with its JSON, so an identity is
    never another record's while it is kept. Thread-safe (routes run in the thread pool)."""

    def __init__(self, size: int = MAX_RECORDS) -> None:
        self.size = size
        self._kept: OrderedDict[int, tuple[AttemptRecord | ActionRecord, msgspec.Raw]] = OrderedDict()
        self._lock = threading.Lock()

    def raw(self, record: AttemptRecord | ActionRecord) -> msgspec.Raw:
        """The record's JSON, as `encode` writes it, ready to be spliced into an answer."""
        kept = self._kept.get(id(record))  # a dict read is atomic: no lock for the common case
        if kept is not None and kept[0] is record:
            return kept[1]
        made = msgspec.Raw(encode(record))
        with self._lock:
            self._kept[id(record)] = (record, made)
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)
        return made

    def __len__(self) -> int:
        return len(self._kept)


ENCODED: Final = EncodedRecords()
"""The process's kept JSON of records (`raw`)."""


def raw(record: AttemptRecord | ActionRecord) -> msgspec.Raw:
    """``record``'s JSON, encoded once per process (`EncodedRecords`): put it in a body where the record goes."""
    return ENCODED.raw(record)


def raws(records: Iterable[AttemptRecord]) -> list[msgspec.Raw]:
    return [ENCODED.raw(record) for record in records]


def json_response(body: object, status_code: int = 200) -> Response:
    """A JSON answer of ``body`` (dicts, lists, numbers, strings, None, records)."""
    return Response(encode(body), status_code=status_code, media_type="application/json")
