"""The agent action record: validation naming the field, the JSON round trip, unknown fields refused."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from egress.record.actions import COMMAND_MAX, ActionRecord


def _json(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "sandbox": "agents",
        "id": "call-1",
        "kind": "shell_command",
        "command": "curl -s http://pool.example:3333",
        "start": 1_700_000_000.0,
        "end": 1_700_000_004.5,
    }
    data.update(overrides)
    return data


def test_round_trip_through_json_text() -> None:
    action = ActionRecord.from_json(_json(received=1_700_000_010.0))
    text = json.dumps(action.to_json())
    assert ActionRecord.from_json(json.loads(text)) == action
    assert action.to_json() == {**_json(received=1_700_000_010.0), "schema": 1}


def test_defaults_and_a_running_action() -> None:
    action = ActionRecord.from_json(_json(end=None))
    assert action.end is None
    assert action.span_end == math.inf
    assert (action.received, action.schema) == (0.0, 1)
    assert ActionRecord.from_json({key: value for key, value in _json().items() if key != "end"}).end is None


def test_integer_times_are_taken_as_floats() -> None:
    action = ActionRecord.from_json(_json(start=1_700_000_000, end=1_700_000_001))
    assert isinstance(action.start, float)
    assert isinstance(action.end, float)


def test_a_long_command_is_cut() -> None:
    action = ActionRecord.from_json(_json(command="x" * 10_000))
    assert len(action.command) == COMMAND_MAX
    assert action.command.endswith("…")
    assert ActionRecord.from_json(_json(command="y" * COMMAND_MAX)).command == "y" * COMMAND_MAX


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"sandbox": ""}, "sandbox"),
        ({"sandbox": 7}, "sandbox"),
        ({"id": ""}, "id"),
        ({"id": "a" * 257}, "id"),
        ({"id": "new\nline"}, "id"),
        ({"kind": "Shell"}, "kind"),
        ({"kind": "x" * 41}, "kind"),
        ({"kind": ""}, "kind"),
        ({"command": None}, "command"),
        ({"start": "yesterday"}, "start"),
        ({"start": -1.0}, "start"),
        ({"start": math.nan}, "start"),
        ({"start": True}, "start"),
        ({"end": math.inf}, "end"),
        ({"end": 1_699_999_999.0}, "end"),
        ({"received": "now"}, "received"),
        ({"schema": 2}, "schema"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_input_names_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ActionRecord.from_json(_json(**overrides))


@pytest.mark.parametrize("missing", ["sandbox", "id", "kind", "command", "start"])
def test_a_missing_field_is_named(missing: str) -> None:
    data = _json()
    del data[missing]
    with pytest.raises(ValueError, match=missing):
        ActionRecord.from_json(data)


def test_not_an_object() -> None:
    with pytest.raises(ValueError, match="JSON object"):
        ActionRecord.from_json([1, 2])  # type: ignore[arg-type]


def test_constructed_directly_it_validates_too() -> None:
    with pytest.raises(ValueError, match=r"end .* is before start"):
        ActionRecord("agents", "a", "other", "", 10.0, 5.0)
    assert ActionRecord("agents", "a", "other", "", 10, 10).end == 10.0
