"""The API's JSON answers, encoded by msgspec straight from the records.

A route that answers records returns `json_response` of a body holding `AttemptRecord` and `ActionRecord` values
themselves: msgspec writes a dataclass's fields in declaration order and an enum as its value, which is exactly the
record's documented JSON (``to_json``, what the store holds). The route keeps its ``response_model``, which
describes the answer in the OpenAPI document; FastAPI does not validate or serialize a `Response` a route returns,
so the records are not rebuilt as pydantic objects (their checks run again) and then encoded a second time: that
round trip was most of the CPU a list or a timeline cost.
"""

from __future__ import annotations

import json
from typing import Final

import msgspec
from fastapi.responses import Response

_ENCODER: Final = msgspec.json.Encoder()


def encode(body: object) -> bytes:
    """``body`` as compact UTF-8 JSON. A string that is not valid Unicode (a lone surrogate, which a record's
    evidence may hold) is written as its ``\\u`` escape rather than failing the answer."""
    try:
        return _ENCODER.encode(body)
    except UnicodeEncodeError:
        return json.dumps(msgspec.to_builtins(body), separators=(",", ":")).encode()


def json_response(body: object, status_code: int = 200) -> Response:
    """A JSON answer of ``body`` (dicts, lists, numbers, strings, None, records)."""
    return Response(encode(body), status_code=status_code, media_type="application/json")
