"""The record layout (egress.record.layout): how a batch is cut into stream entries, and the entry encoding."""

from __future__ import annotations

import itertools
import json
from typing import Any, Final

from hypothesis import given
from hypothesis import strategies as st

from egress.record.layout import (
    SPAN,
    decode_counted,
    decode_entry,
    encode_entry,
    entry_chunks,
    is_finding,
    seen_key,
    stream_key,
)
from tests.record import record

BASE = 1_750_000_000.0


@given(
    offsets=st.lists(st.floats(min_value=0, max_value=600, allow_nan=False), min_size=1, max_size=200),
    size=st.integers(min_value=1, max_value=40),
)
def test_entries_are_sorted_bounded_in_size_and_span_and_cover_the_batch(offsets: list[float], size: int) -> None:
    batch = [record(ts=BASE + offset, sport=index) for index, offset in enumerate(offsets)]
    entries = list(entry_chunks(batch, size))
    flat = [item for entry in entries for item in entry]
    assert flat == sorted(batch, key=lambda item: item.ts)  # stable: equal times keep the batch's order
    for entry in entries:
        assert 1 <= len(entry) <= size
        assert entry[-1].ts - entry[0].ts <= SPAN
    for first, second in itertools.pairwise(entries):  # an entry ends only when it had to
        assert len(first) == size or second[0].ts - first[0].ts > SPAN
    assert list(entry_chunks(list(batch), size)) == entries  # a replay of the batch cuts the same entries


POLICY: Final[dict[str, Any]] = {
    "category": "policy",
    "protocol": "tcp",
    "reason": "not-allowlisted",
    "detector": "policy",
}
"""A record the policy alone made (not a finding)."""


@given(
    kinds=st.lists(st.booleans(), min_size=1, max_size=120),
    size=st.integers(min_value=1, max_value=40),
)
def test_an_entry_holds_findings_only_or_policy_records_only(kinds: list[bool], size: int) -> None:
    batch = [record(ts=BASE + index / 100, sport=index, **({} if kind else POLICY)) for index, kind in enumerate(kinds)]
    entries = list(entry_chunks(batch, size))
    flat = [item for entry in entries for item in entry]
    assert flat == [item for item in batch if is_finding(item)] + [item for item in batch if not is_finding(item)]
    for entry in entries:
        assert len({is_finding(item) for item in entry}) == 1
    for first, second in itertools.pairwise(entries):  # an entry ends only when it had to
        assert len(first) == size or is_finding(first[-1]) is not is_finding(second[0])
    assert len(entries) <= -(-kinds.count(True) // size) + -(-kinds.count(False) // size)  # not one per run


def test_entry_encoding_is_the_documented_json_of_each_record() -> None:
    records = [
        record(ts=BASE + 0.1, host="pool.example.com", evidence='{"method":"login"} \u00e9\u4e2d\n\x01'),
        record(ts=BASE + 2.5, count=7, first_ts=BASE + 1, last_ts=BASE + 9),
    ]
    payload = encode_entry(records)
    as_json = [json.dumps(item.to_json(), separators=(",", ":"), ensure_ascii=False) for item in records]
    assert payload.decode() == "[" + ",".join(as_json) + "]"  # byte for byte what `egress events --json` prints
    assert decode_entry({"n": "2", "records": payload.decode()}) == records
    assert decode_entry({"id": "an entry of another layout"}) == []


def test_a_string_that_is_not_unicode_is_escaped_not_lost() -> None:
    odd = record(ts=BASE, evidence="half a pair \ud800 here")
    payload = encode_entry([odd]).decode()
    [back] = decode_entry({"records": payload})
    assert back == odd
    assert decode_counted(payload)[0].ts == odd.ts


def test_keys_keep_every_sandbox_inside_its_hash_tag() -> None:
    assert stream_key("a}b{c") == "egress:{a%7Db%7Bc}:attempts"
    assert seen_key("", "01J") == "egress:{%}:seen:01J"
