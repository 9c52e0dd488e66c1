from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress.decide import DEFAULT_DENY, Enforcement, Reason, Verdict
from egress.decisions import DecidedFlow
from egress.detect.base import Category, Finding, Transport
from egress.record.layout import decode_entry, encode_entry
from egress.record.schema import AttemptRecord, RecordCategory, id_time, make_id
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
        ({"category": "spam"}, "category 'spam' is not one of mining, crypto-node, tunnel, policy"),
        ({"action": "allow"}, "action 'allow' is not recorded"),
        ({"action": "drop"}, "action 'drop' is not one of"),
        ({"reason": ""}, "reason '' is not one of"),
        ({"reason": "not-allowed"}, "reason 'not-allowed' is not one of not-allowlisted"),
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


def test_the_closed_fields_are_the_enums_the_code_decides_with() -> None:
    attempt = record(transport="udp", category="policy", reason="not-allowlisted", action="would-block")
    assert attempt.transport is Transport.UDP and attempt.category is RecordCategory.POLICY
    assert attempt.reason is Reason.NOT_ALLOWLISTED and attempt.action is Enforcement.WOULD_BLOCK
    data = attempt.to_json()
    assert {type(data[name]) for name in ("transport", "category", "reason", "action")} == {str}
    assert {category.value for category in RecordCategory} == {category.value for category in Category} | {"policy"}
    assert {category.name for category in Category} <= {category.name for category in RecordCategory}


@pytest.mark.parametrize(("field", "value"), [("reason", "not-allowed"), ("category", "spam"), ("action", "allow")])
def test_a_stored_value_outside_its_set_is_an_error_naming_the_field(field: str, value: str) -> None:
    payload = encode_entry([record()]).decode()
    bad = payload.replace(f'"{field}":"{record().to_json()[field]}"', f'"{field}":"{value}"')
    assert bad != payload
    with pytest.raises(ValueError, match=f"{field} '{value}'"):
        decode_entry({"records": bad})
    with pytest.raises(ValueError, match=f"{field} '{value}'"):
        AttemptRecord.from_json(json.loads(bad)[0])


STRATUM = Finding(Category.MINING, "stratum-v1", "stratum", '{"method":"mining.subscribe"}')


def _flow(verdict: Verdict, transport: str = "tcp") -> DecidedFlow:
    return DecidedFlow(1_700_000_000.5, "agents", "10.77.0.2", 40000, "203.0.113.9", 3333, transport, "", verdict)


@pytest.mark.parametrize(
    ("verdict", "expected"),
    [
        (
            Verdict(Enforcement.BLOCK, Reason.MINING, "sandboxes.agents.detectors.mining", "stratum-v1: x", STRATUM),
            {"category": "mining", "protocol": "stratum-v1", "detector": "stratum", "action": "block"},
        ),
        (
            Verdict(Enforcement.RECORD, Reason.MINING, "sandboxes.agents.detectors.mining", "stratum-v1: x", STRATUM),
            {"category": "mining", "protocol": "stratum-v1", "detector": "stratum", "action": "record"},
        ),
        (
            Verdict(Enforcement.WOULD_BLOCK, Reason.DIRECT_IP, DEFAULT_DENY, "203.0.113.9:3333"),
            {"category": "policy", "protocol": "tcp", "detector": "policy", "action": "would-block"},
        ),
    ],
)
def test_a_decided_flow_becomes_its_record(verdict: Verdict, expected: dict[str, str]) -> None:
    made = AttemptRecord.of(_flow(verdict), "gw1", make_id(1_700_000_000.5, bytes(10)))
    data = made.to_json()
    assert {name: data[name] for name in expected} == expected
    assert (data["reason"], data["rule"], data["evidence"]) == (verdict.reason, verdict.rule, verdict.evidence)
    assert (data["ts"], data["first_ts"], data["last_ts"], data["count"]) == (1_700_000_000.5,) * 3 + (1,)
    assert (data["gateway"], data["sandbox"], data["dst"], data["dport"]) == ("gw1", "agents", "203.0.113.9", 3333)


def test_an_allowed_flow_or_an_unknown_transport_is_not_a_record() -> None:
    allowed = Verdict(Enforcement.ALLOW, None, "sandboxes.agents.allow.hosts[0]", "")
    with pytest.raises(ValueError, match="allowed flow is not recorded"):
        AttemptRecord.of(_flow(allowed), "gw1", make_id(1.0, bytes(10)))
    blocked = Verdict(Enforcement.BLOCK, Reason.FIREWALL_DROP, DEFAULT_DENY, "sctp")
    with pytest.raises(ValueError, match="sctp"):
        AttemptRecord.of(_flow(blocked, transport="sctp"), "gw1", make_id(1.0, bytes(10)))


@pytest.mark.parametrize("host", ["rt14\x1b[1A\x1b[2K", "rt14\n2026-12-03 other", "rt14\x1b]0;x\x1b\\"])
def test_a_host_that_is_not_printable_is_recorded_escaped(host: str) -> None:
    """Red team 14: a name the agent asked for reaches readers' terminals; made and read, it is escaped."""
    made = record(host=host)
    assert made.host.isprintable() and made.host.startswith("rt14\\0")
    data = made.to_json() | {"host": host}  # stored raw by a gateway from before the escape
    assert AttemptRecord.from_json(data).host == made.host
    assert decode_entry({"records": json.dumps([data])})[0].host == made.host
