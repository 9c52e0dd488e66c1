"""The API's request and response shapes (pydantic): they validate input and define the OpenAPI description.

Every request model forbids unknown fields (``extra="forbid"``), so an unknown query parameter or body field is a
400 naming it. Times in queries are epoch seconds or ISO 8601 (a time without a zone is UTC); in responses they
are epoch seconds. An attempt is `egress.record.schema.AttemptRecord` itself (docs/records.md): its fields, types,
closed sets and field docstrings make the ``Attempt`` of the description.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import inspect
import math
import textwrap
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from egress.decide import Enforcement
from egress.record.actions import ActionRecord
from egress.record.schema import AttemptRecord, RecordCategory

MAX_PAGE: Final = 1000
MAX_BATCH: Final = 1000
MAX_WINDOW_S: Final = 366 * 86400
MAX_TIME: Final = 253402300799.0
"""9999-12-31T23:59:59Z: beyond it ISO 8601 cannot say the time."""

StatsBy = Literal["reason", "category", "sandbox", "destination"]


def parse_time(value: Any) -> float:
    """Epoch seconds (number or numeric text) or ISO 8601 text → epoch seconds; `ValueError` saying why not."""
    if isinstance(value, bool):
        raise ValueError("must be epoch seconds or an ISO 8601 time")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            try:
                when = datetime.datetime.fromisoformat(text)
            except ValueError:
                raise ValueError("must be epoch seconds or an ISO 8601 time") from None
            if when.tzinfo is None:
                when = when.replace(tzinfo=datetime.UTC)
            seconds = when.timestamp()
    else:
        raise ValueError("must be epoch seconds or an ISO 8601 time")
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_TIME:
        raise ValueError(f"must be a time between 0 and {MAX_TIME:.0f} (year 9999)")
    return seconds


Time = Annotated[
    float,
    BeforeValidator(parse_time),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": MAX_TIME},
                {"type": "string", "format": "date-time"},
            ],
            "description": "epoch seconds or ISO 8601 (UTC when no zone is given)",
        }
    ),
]
Reason = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")]
SandboxName = Annotated[str, Field(max_length=256)]
Cursor = Annotated[str, Field(min_length=1, max_length=512, pattern=r"^[\x21-\x7e]+$")]


class _Query(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class NoQuery(_Query):
    """No query parameters at all."""


class Window(_Query):
    """A query over a time range: ``until`` may not come before ``since``."""

    @field_validator("until", check_fields=False)
    @classmethod
    def _ordered(cls, until: float | None, info: ValidationInfo) -> float | None:
        since = info.data.get("since")
        if since is not None and until is not None and since > until:
            raise ValueError("time range inverted: until is before since")
        return until


class AttemptsQuery(Window):
    sandbox: SandboxName | None = Field(None, description='Only this sandbox ("" = sources in no sandbox).')
    category: RecordCategory | None = None
    reason: Reason | None = None
    destination: Annotated[str, Field(min_length=1, max_length=256)] | None = Field(
        None, description="An address (dst), or a host name (exact, or any name below it)."
    )
    since: Time | None = None
    until: Time | None = None
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE)] = 100
    cursor: Cursor | None = Field(None, description="next_cursor of the previous page (same filters).")
    correlate: bool = Field(False, description="Also return each attempt's correlated actions (`correlated`).")


class TimelineQuery(Window):
    since: Time | None = Field(None, description="Default: 24 hours before until.")
    until: Time | None = Field(None, description="Default: now.")
    limit: Annotated[int, Field(ge=1, le=MAX_PAGE)] = 500


class StatsQuery(_Query):
    window: Annotated[float, Field(gt=0, le=MAX_WINDOW_S, description="Seconds before now.")] = 3600
    by: StatsBy = "reason"


class SeriesQuery(StatsQuery):
    by: StatsBy = "category"
    buckets: Annotated[int, Field(ge=1, le=120, description="At most this many (buckets are whole minutes).")] = 30


class FollowQuery(_Query):
    sandbox: SandboxName | None = None
    category: RecordCategory | None = None


def _field_docs(cls: type) -> dict[str, str]:
    """The docstrings under a class's annotated fields (``name: type`` then a string), by field name."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    assert isinstance(body, ast.ClassDef)
    docs = {}
    for field, after in zip(body.body, body.body[1:], strict=False):
        if (
            isinstance(field, ast.AnnAssign)
            and isinstance(field.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[field.target.id] = inspect.cleandoc(after.value.value)
    return docs


_ATTEMPT_DOCS: Final = _field_docs(AttemptRecord)
_RECORDED: Final = [action.value for action in Enforcement if action is not Enforcement.ALLOW]


def _describe_attempt(schema: dict[str, Any]) -> None:
    """Every field is always present: no defaults (they are the constructor's); each field described by its
    docstring; ``action`` is never ``allow``."""
    for name, prop in schema["properties"].items():
        prop.pop("default", None)
        if name in _ATTEMPT_DOCS:
            prop["description"] = _ATTEMPT_DOCS[name]
    schema["properties"]["action"] = {
        "type": "string",
        "enum": _RECORDED,
        "title": "Action",
        "description": _ATTEMPT_DOCS["action"],
    }


class Attempt(AttemptRecord):
    """An attempt record (docs/records.md), exactly as the CLI's JSON lines carry it."""

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(
        title="Attempt", json_schema_serialization_defaults_required=True, json_schema_extra=_describe_attempt
    )


_ACTION_DOCS: Final = {
    **_field_docs(ActionRecord),
    "distance_s": "0 when the attempt falls inside the action's span, else seconds outside it (within the slack).",
}


def _describe_action(schema: dict[str, Any]) -> None:
    """Every field is always present in answers, each described by its docstring in `ActionRecord`."""
    for name, prop in schema["properties"].items():
        prop.pop("default", None)
        if name in _ACTION_DOCS:
            prop["description"] = _ACTION_DOCS[name]


class Action(ActionRecord):
    """An agent action reported by the sandbox harness (docs/records.md), exactly as stored."""

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(
        title="Action", json_schema_serialization_defaults_required=True, json_schema_extra=_describe_action
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class CorrelatedAction(Action):
    """An action with how far the attempt is from its span."""

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(
        title="CorrelatedAction", json_schema_serialization_defaults_required=True, json_schema_extra=_describe_action
    )

    distance_s: float
    """See ``_ACTION_DOCS``."""


class ActionIn(BaseModel):
    """One action as the harness reports it; ``received`` is stamped by the API."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    sandbox: Annotated[str, Field(max_length=256)]
    id: Annotated[str, Field(min_length=1, max_length=256)]
    kind: Annotated[str, Field(pattern=r"^[a-z_]{1,40}$")] = Field(
        description="tool_call, shell_command, http_request, file_write, other, or another [a-z_] token"
    )
    command: Annotated[str, Field(max_length=65536)] = Field(description="Kept up to 4096 characters.")
    start: Annotated[float, Field(ge=0, le=MAX_TIME)]
    end: Annotated[float, Field(ge=0, le=MAX_TIME)] | None = None
    schema_: Literal[1] = Field(1, alias="schema")

    @model_validator(mode="after")
    def _span(self) -> ActionIn:
        if self.end is not None and self.end < self.start:
            raise ValueError("end is before start")
        return self


class ActionBatch(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    actions: Annotated[list[ActionIn], Field(min_length=1, max_length=MAX_BATCH)]


class Accepted(BaseModel):
    accepted: int


class ErrorDetail(BaseModel):
    field: str | None
    """The parameter or body field at fault (``since``, ``actions[3].kind``), or null."""
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail
    problems: list[ErrorDetail] | None = None
    """Every problem found, when there was more than one."""


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    redis: bool
    version: str


class AttemptPage(BaseModel):
    attempts: list[Attempt]
    next_cursor: str | None
    correlated: dict[str, list[CorrelatedAction]] | None = None
    """With ``correlate=true``: attempt id → its actions (containment wins, innermost first; docs/records.md)."""


class AttemptDetail(BaseModel):
    attempt: Attempt
    actions: list[CorrelatedAction]


class Sandboxes(BaseModel):
    sandboxes: list[str]


class AttemptItem(BaseModel):
    type: Literal["attempt"]
    ts: float
    attempt: Attempt
    related: list[str]
    """Ids of the actions this attempt is tied to (containment wins, innermost first)."""


class ActionItem(BaseModel):
    type: Literal["action"]
    ts: float
    action: Action


class Timeline(BaseModel):
    sandbox: str
    since: float
    until: float
    items: list[Annotated[AttemptItem | ActionItem, Field(discriminator="type")]]
    truncated: bool = Field(
        description="Older actions or attempts in the window were left out: the items are the newest `limit` of each."
    )


class Stats(BaseModel):
    window_s: float
    by: StatsBy
    since: float = Field(description="The start of the window's first whole minute (counts are kept per minute).")
    until: float
    counts: dict[str, int]


class SandboxRetained(BaseModel):
    records: int = Field(description="Records held (findings and policy records).")
    findings: int = Field(description="Of those, findings (each kind has its own size budget).")
    trimmed_by_size: int = Field(description="Records the size retention dropped since the first record.")
    trimmed_findings_by_size: int
    trimmed_by_age: int = Field(description="Records the age retention dropped since the first record.")
    trimmed_findings_by_age: int


class Retention(BaseModel):
    sandboxes: dict[str, SandboxRetained]


class Bucket(BaseModel):
    start: float
    end: float
    counts: dict[str, int]


class Series(BaseModel):
    window_s: float
    by: StatsBy
    buckets: list[Bucket]
