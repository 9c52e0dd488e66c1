from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress.record.schema import AttemptRecord, id_time, make_id
from tests.record import record


def test_id_is_26_crockford_chars_and_encodes_the_millisecond() -> None:
    record_id = make_id(1_700_000_000.123, bytes(10))
    assert record_id == "01HF7YAT3V0000000000000000"
    assert id_time(record_id) == 1_700_000_000.123


@given(
    st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False),
    st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False),
    st.binary(min_size=10, max_size=10),
    st.binary(min_size=10, max_size=10),
)
def test_ids_sort_by_time(early: float, late: float, first: bytes, second: bytes) -> None:
    if int(early * 1000) < int(late * 1000):
        assert make_id(early, first) < make_id(late, second)


def test_id_needs_ten_random_bytes() -> None:
    with pytest.raises(ValueError, match="10 random bytes"):
        make_id(1.0, b"short")


def test_first_and_last_default_to_ts() -> None:
    attempt = record(ts=123.5)
    assert (attempt.first_ts, attempt.last_ts, attempt.count, attempt.schema) == (123.5, 123.5, 1, 1)


def test_json_round_trip_through_text() -> None:
    attempt = record(category="policy", protocol="udp", transport="udp", dport=443, action="would-block")
    data = attempt.to_json()
    assert data["sport"] == 40000 and data["ts"] == attempt.ts
    assert AttemptRecord.from_json(json.loads(json.dumps(data))) == attempt


def test_readers_ignore_unknown_fields_but_refuse_other_schemas() -> None:
    data = record(ts=1_700_000_000.123456789).to_json()
    assert AttemptRecord.from_json({**data, "future": "x"}) == AttemptRecord.from_json(data)
    with pytest.raises(ValueError, match="schema"):
        AttemptRecord.from_json({**data, "schema": 2})
    with pytest.raises(ValueError, match="lacks host"):
        AttemptRecord.from_json({key: value for key, value in data.items() if key != "host"})
    with pytest.raises(ValueError, match="must be int"):
        AttemptRecord.from_json({**record().to_json(), "dport": "3333"})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"id": "not-an-id"}, "26-character id"),
        ({"transport": "sctp"}, "transport"),
        ({"category": "spam"}, "category"),
        ({"action": "allow"}, "action"),
        ({"reason": ""}, "reason"),
        ({"reason": "Has Spaces"}, "reason"),
        ({"dport": 70000}, "dport"),
        ({"count": 0}, "count"),
        ({"first_ts": 10.0, "last_ts": 5.0}, "after last_ts"),
        ({"ts": float("nan")}, "ts"),
        ({"schema": 2}, "schema"),
    ],
)
def test_invalid_records_are_refused(override: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        record(**override)
