"""The derived fields of attempt records (egress/record/derived.py and their filling in egress/record/schema.py)."""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress.decide import Reason
from egress.detect.ipproto import NAMES
from egress.record import derived
from egress.record.community_id import community_id
from egress.record.layout import decode_payload, encode_entry
from egress.record.schema import DERIVED, WITHOUT_DERIVED, AttemptRecord
from tests.record import record

DETECTORS = (
    "policy", "stratum", "stratum2", "ethstratum", "getwork", "cryptonote", "cryptonode", "jsonrpc", "names", "tls",
    "tlsshape", "ssh", "tor", "vpn", "websocket", "encrypted", "proxytunnel", "dns_tunnel", "icmp_tunnel", "ipproto",
    "identity", "http", "websocket+stratum",
)  # fmt: skip
PROTOCOLS = ("tcp", "udp", "icmp", "ip", "stratum-v1", "stratum-v2", "xmrig", "doh", "dot", "ssh", "tor", "gre")


def test_a_record_carries_the_community_id_of_its_flow() -> None:
    made = record(src="10.77.0.2", sport=40000, dst="203.0.113.9", dport=3333, transport="tcp")
    assert made.community_id == community_id("10.77.0.2", "203.0.113.9", 6, 40000, 3333)
    udp = record(transport="udp", dport=53, src="fd00::2", dst="fd00::1")
    assert udp.community_id == community_id("fd00::2", "fd00::1", 17, 40000, 53)


def test_icmp_is_taken_as_an_echo_exchange_and_other_protocols_by_their_number() -> None:
    ping = record(transport="icmp", sport=0, dport=0, protocol="icmp")
    assert ping.community_id == community_id("10.77.0.2", "203.0.113.9", 1, 8, 0)
    ping6 = record(transport="icmp", sport=0, dport=0, src="fd00::2", dst="2001:db8::1")
    assert ping6.community_id == community_id("fd00::2", "2001:db8::1", 58, 128, 0)
    gre = record(transport="ip", sport=0, dport=0, protocol="gre")
    assert gre.community_id == community_id("10.77.0.2", "203.0.113.9", 47)
    assert record(transport="ip", sport=0, dport=0, protocol="ip-253").community_id == community_id(
        "10.77.0.2", "203.0.113.9", 253
    )


def test_a_record_without_a_flow_has_no_community_id() -> None:
    assert record(src="", reason="dns-dropped", category="policy").community_id == ""
    assert record(transport="ip", protocol="something", sport=0, dport=0).community_id == ""


def test_timestamp_is_rfc3339_utc_of_ts() -> None:
    made = record(ts=1_700_000_000.123456)
    assert made.timestamp == "2023-11-14T22:13:20.123456Z"
    parsed = datetime.datetime.fromisoformat(made.timestamp)
    assert abs(parsed.timestamp() - made.ts) < 1e-6


@given(st.floats(min_value=0, max_value=253402300799, allow_nan=False))
def test_rfc3339_reads_back_as_the_same_time(ts: float) -> None:
    text = derived.rfc3339(ts)
    assert abs(datetime.datetime.fromisoformat(text).timestamp() - ts) < 2e-6


@pytest.mark.parametrize(
    ("category", "reason", "expected"),
    [
        ("mining", "mining", "high"),
        ("tunnel", "tunnel", "high"),
        ("policy", "dns-tunnel", "high"),
        ("crypto-node", "crypto-node", "medium"),
        ("policy", "name-address-mismatch", "medium"),
        ("policy", "domain-fronting", "medium"),
        ("policy", "not-allowlisted", "low"),
        ("policy", "firewall-drop", "low"),
    ],
)
def test_severity(category: str, reason: str, expected: str) -> None:
    assert record(category=category, reason=reason, detector="policy").severity == expected


def test_signature_ids_are_stable_and_do_not_collide() -> None:
    mined = record()
    assert mined.signature_id == derived.signature_id("stratum/stratum-v1/mining") == 3_582_160_495  # never changes
    assert record(dport=1, sport=2, dst="198.51.100.1").signature_id == mined.signature_id
    policy = record(category="policy", reason="not-allowlisted", detector="policy", protocol="tcp")
    assert policy.signature_id == record(**{**policy.to_json(), "protocol": "udp", "id": mined.id}).signature_id
    names = {
        derived.signature(detector, protocol, reason)
        for detector, protocol, reason in itertools.product(
            DETECTORS, (*PROTOCOLS, *NAMES.values()), [reason.value for reason in Reason]
        )
    }
    ids = {derived.signature_id(name) for name in names}
    assert len(ids) == len(names)
    assert all(0 < number < 1 << 32 for number in ids)


def test_a_record_written_before_the_derived_fields_reads_with_them() -> None:
    made = record()
    old = {key: value for key, value in made.to_json().items() if key not in DERIVED}
    assert AttemptRecord.from_json(old) == made
    entry = json.dumps([old]).encode()
    assert decode_payload(entry) == [made]
    assert decode_payload(encode_entry([made])) == [made]


def test_a_stored_derived_field_is_kept_and_a_bad_one_refused() -> None:
    data = record().to_json()
    assert AttemptRecord.from_json({**data, "severity": "low"}).severity == "low"
    for name, value in (("community_id", "2:abc"), ("severity", "dire"), ("signature_id", 1 << 32)):
        with pytest.raises(ValueError, match=name):
            AttemptRecord.from_json({**data, name: value})


def test_replace_with_without_derived_derives_anew() -> None:
    made = record(ts=1_700_000_000.0)
    moved = dataclasses.replace(made, ts=1_700_000_001.0, dport=4444, **WITHOUT_DERIVED)
    assert moved.timestamp == "2023-11-14T22:13:21.000000Z"
    assert moved.community_id == community_id("10.77.0.2", "203.0.113.9", 6, 40000, 4444)
