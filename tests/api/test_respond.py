"""The API's JSON answers encoded straight from the records (egress/api/respond.py): the same JSON the pydantic
response models described and produced, field for field and in order, and no 500 for a record that holds a lone
surrogate (which pydantic could not encode)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import TypeAdapter

from egress.api import models
from egress.api.respond import EncodedRecords, encode, json_response, raws
from egress.correlate import timeline
from egress.record.actions import ActionRecord
from egress.record.schema import AttemptRecord
from tests.api import seed_actions, seed_attempts
from tests.record import record

NOW = 1_700_000_000.0


def _by_model(model: type[Any], body: dict[str, Any]) -> Any:
    """What FastAPI answered before: the body validated into the response model, then dumped."""
    adapter = TypeAdapter(model)
    return json.loads(adapter.dump_json(adapter.validate_python(body)))


def test_a_record_is_its_documented_json_in_field_order() -> None:
    for attempt in seed_attempts(NOW):
        decoded = json.loads(encode(attempt))
        assert decoded == attempt.to_json()
        assert list(decoded) == list(attempt.to_json())
    for action in seed_actions(NOW):
        assert list(json.loads(encode(action)).items()) == list(action.to_json().items())


def test_answers_match_what_the_response_models_made() -> None:
    attempts, actions = seed_attempts(NOW), seed_actions(NOW)
    correlated = {attempts[0].id: [{**actions[0].to_json(), "distance_s": 0.0}]}
    page = {"attempts": attempts, "next_cursor": "abc", "correlated": correlated}
    assert json.loads(bytes(json_response(page).body)) == _by_model(
        models.AttemptPage, {**page, "attempts": [a.to_json() for a in attempts]}
    )
    plain = {"attempts": attempts, "next_cursor": None, "correlated": None}
    assert json.loads(bytes(json_response(plain).body)) == _by_model(
        models.AttemptPage, {"attempts": [a.to_json() for a in attempts], "next_cursor": None}
    )
    items: list[dict[str, Any]] = []
    for item in timeline(actions[:2], attempts[:3], 2.0):
        if item.attempt is not None:
            items.append({"type": "attempt", "ts": item.ts, "attempt": item.attempt, "related": item.related})
        elif item.action is not None:
            items.append({"type": "action", "ts": item.ts, "action": item.action})
    line = {"sandbox": "agents", "since": NOW - 3600, "until": NOW, "items": items, "truncated": False}
    old_items = [
        {**item, "attempt": item["attempt"].to_json(), "related": list(item["related"])}
        if item["type"] == "attempt"
        else {**item, "action": item["action"].to_json()}
        for item in items
    ]
    assert json.loads(bytes(json_response(line).body)) == _by_model(models.Timeline, {**line, "items": old_items})


@pytest.mark.parametrize("evidence", ["\ud800", "GET /\udcff HTTP/1.1", "ünï 😀"])
def test_text_that_is_not_valid_unicode_is_escaped_not_a_failure(evidence: str) -> None:
    attempt = record(NOW, evidence=evidence)
    response = json_response({"attempts": [attempt], "next_cursor": None, "correlated": None})
    assert response.status_code == 200 and response.media_type == "application/json"
    assert json.loads(bytes(response.body))["attempts"][0]["evidence"] == evidence


def test_a_record_spliced_from_its_kept_json_answers_the_same_bytes() -> None:
    attempts, actions = seed_attempts(NOW), seed_actions(NOW)
    kept = EncodedRecords()
    values: list[AttemptRecord | ActionRecord] = [*attempts, *actions]
    for value in values:
        assert bytes(kept.raw(value)) == encode(value)
        assert kept.raw(value) is kept.raw(value)  # encoded once
    body = {"attempts": attempts, "next_cursor": None, "correlated": None}
    assert encode({**body, "attempts": [kept.raw(attempt) for attempt in attempts]}) == encode(body)


def test_the_kept_json_is_bounded_and_never_another_record_s() -> None:
    kept = EncodedRecords(size=3)
    attempts = [record(NOW + n, evidence=f"e{n}") for n in range(5)]
    for attempt in attempts:
        kept.raw(attempt)
    assert len(kept) == 3
    for attempt in attempts:  # the first two were dropped: encoded again, never answered from another record
        assert json.loads(bytes(kept.raw(attempt)))["evidence"] == attempt.evidence


def test_kept_json_of_text_that_is_not_valid_unicode_is_escaped() -> None:
    attempt = record(NOW, evidence="GET /\udcff")
    answer = json_response({"attempts": raws([attempt]), "next_cursor": None, "correlated": None})
    assert json.loads(bytes(answer.body))["attempts"][0]["evidence"] == "GET /\udcff"
