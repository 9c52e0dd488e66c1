"""egress/record/export.py and ``egress export``: records as eve.json alerts and Zeek logs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from click.testing import CliRunner

from egress.cli_export import export
from egress.record.export import ZEEK_FIELDS, eve, zeek, zeek_header, zeek_json, zeek_line
from egress.record.store import RecordStore
from tests.record import record
from tests.redis_server import RedisServer

SCHEMA = json.loads((Path(__file__).parent / "data" / "eve_alert.schema.json").read_text())
VALIDATOR = jsonschema_rs.validator_for(SCHEMA)

VARIANTS: list[dict[str, Any]] = [
    {},
    {"action": "would-block", "category": "policy", "reason": "not-allowlisted", "detector": "policy"},
    {"transport": "udp", "dport": 53, "category": "tunnel", "reason": "dns-tunnel", "host": "x.t.example.net"},
    {"transport": "icmp", "sport": 0, "dport": 0, "category": "tunnel", "reason": "tunnel", "protocol": "ptunnel"},
    {"transport": "ip", "sport": 0, "dport": 0, "protocol": "gre", "src": "fd00::2", "dst": "2001:db8::1"},
    {"src": "", "sport": 0, "category": "policy", "reason": "dns-dropped", "evidence": "", "count": 374},
    {"evidence": "tab\there\nnewline \\ backslash", "action": "record"},
]


@pytest.mark.parametrize("overrides", VARIANTS)
def test_eve_events_have_the_alert_shape(overrides: dict[str, Any]) -> None:
    made = record(**overrides)
    event = eve(made)
    errors = [error.message for error in VALIDATOR.iter_errors(event)]
    assert errors == [], errors
    assert event["alert"]["signature_id"] == made.signature_id
    assert event["alert"]["action"] == ("blocked" if made.action == "block" else "allowed")
    assert event.get("community_id", "") == made.community_id


def test_the_schema_can_fail() -> None:
    event = eve(record())
    for broken in (
        {**event, "timestamp": "2026-11-29T21:04:25Z"},  # eve writes the offset as +0000
        {**event, "alert": {**event["alert"], "sandbox": "agents"}},  # alert is closed to its own keys
        {**event, "alert": {**event["alert"], "severity": "high"}},
        {key: value for key, value in event.items() if key != "alert"},
    ):
        assert not VALIDATOR.is_valid(broken)


def test_zeek_lines_have_one_value_per_field_and_escape_separators() -> None:
    made = record(evidence="tab\there\nand - more", host="")
    line = zeek_line(made)
    values = line.split("\t")
    assert len(values) == len(ZEEK_FIELDS)
    entry = dict(zip((name for name, _ in ZEEK_FIELDS), values, strict=True))
    assert entry["sub"] == "tab\\x09here\\x0aand - more"
    assert entry["host"] == "-"  # unset
    assert entry["community_id"] == made.community_id and entry["uid"] == made.id
    header = list(zeek_header(0.0))
    assert header[-2].split("\t")[1:] == [name for name, _ in ZEEK_FIELDS]
    assert json.loads(zeek_json(made)) == {key: value for key, value in zeek(made).items() if value is not None}


@pytest.fixture
def store(redis_server: RedisServer, tmp_path: Path) -> RecordStore:
    redis_server.flush()
    return RecordStore(redis_server.url, tmp_path, "gw1")


def test_a_record_round_trips_through_export_eve(redis_server: RedisServer, store: RecordStore) -> None:
    now = time.time()
    written = [record(ts=now - 60), record(ts=now - 30, **VARIANTS[2]), record(ts=now - 10, **VARIANTS[1])]
    store.write(written)
    store.close()
    result = CliRunner().invoke(export, ["--redis-url", redis_server.url, "--format", "eve"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.output.splitlines()]
    assert [event["egress"]["id"] for event in events] == [made.id for made in written]
    for event, made in zip(events, written, strict=True):
        assert VALIDATOR.is_valid(event)
        assert event == eve(made)
        back = {**made.to_json()}
        assert (event["src_ip"], event["dest_ip"], event["community_id"]) == (
            back["src"],
            back["dst"],
            made.community_id,
        )
        assert event["egress"]["reason"] == back["reason"] and event["payload_printable"] == back["evidence"]
    zeek_out = CliRunner().invoke(export, ["--redis-url", redis_server.url, "--format", "zeek"]).output.splitlines()
    assert zeek_out[0] == "#separator \\x09" and zeek_out[-1].startswith("#close")
    assert [line.split("\t")[1] for line in zeek_out[8:-1]] == [made.id for made in written]


def test_export_refuses_a_bad_option() -> None:
    result = CliRunner().invoke(export, ["--format", "pcap"])
    assert result.exit_code == 2 and "--format" in result.output
