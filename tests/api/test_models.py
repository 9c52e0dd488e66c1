"""The API's shapes (egress.api.models): the attempt the API describes and returns is the record itself."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from egress.api import models
from egress.decide import Enforcement, Reason
from egress.record.schema import AttemptRecord, RecordCategory
from tests.api import description
from tests.record import record


class _Page(BaseModel):
    attempts: list[models.Attempt]


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return description()


def _resolve(spec: dict[str, Any], prop: dict[str, Any]) -> dict[str, Any]:
    ref = prop.get("$ref")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else prop


def test_the_described_attempt_is_the_record(spec: dict[str, Any]) -> None:
    attempt = spec["components"]["schemas"]["Attempt"]
    names = [field.name for field in dataclasses.fields(AttemptRecord)]
    assert list(attempt["properties"]) == names
    assert attempt["required"] == names  # every field is always present
    assert all("default" not in prop for prop in attempt["properties"].values())
    assert all(prop.get("description") for prop in attempt["properties"].values())
    enums = {name: _resolve(spec, attempt["properties"][name])["enum"] for name in ("category", "reason", "action")}
    assert enums == {
        "category": [category.value for category in RecordCategory],
        "reason": [reason.value for reason in Reason],
        "action": ["block", "would-block", "record"],
    }
    assert _resolve(spec, attempt["properties"]["transport"])["enum"] == ["tcp", "udp", "icmp", "ip"]


def test_an_attempt_goes_out_exactly_as_the_record_s_json() -> None:
    records = [record(), record(category="policy", reason="not-allowlisted", action="would-block", transport="udp")]
    page = _Page.model_validate({"attempts": [item.to_json() for item in records]})
    assert page.model_dump(mode="json")["attempts"] == [item.to_json() for item in records]


def test_a_value_outside_its_set_does_not_go_out() -> None:
    bad = {**record().to_json(), "action": Enforcement.ALLOW.value}
    with pytest.raises(ValidationError, match="action 'allow' is not recorded"):
        _Page.model_validate({"attempts": [bad]})
