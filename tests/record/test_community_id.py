"""egress/record/community_id.py against the Community ID specification's published baseline vectors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from egress.record.community_id import community_id

VECTORS: list[dict[str, Any]] = json.loads((Path(__file__).parent / "data" / "community_id_baseline.json").read_text())[
    "vectors"
]


@pytest.mark.parametrize("vector", VECTORS, ids=lambda v: f"{v['proto']}-{v['saddr']}-{v['sport']}")
def test_baseline_vectors(vector: dict[str, Any]) -> None:
    got = community_id(
        vector["saddr"], vector["daddr"], vector["proto"], vector["sport"] or 0, vector["dport"] or 0,
        seed=vector.get("seed", 0),
    )  # fmt: skip
    assert got == vector["communityid"]


def test_both_directions_of_a_flow_hash_alike_and_differ_from_another_flow() -> None:
    there = community_id("10.77.0.2", "203.0.113.9", 6, 40000, 3333)
    assert there == community_id("203.0.113.9", "10.77.0.2", 6, 3333, 40000)
    assert there != community_id("10.77.0.2", "203.0.113.9", 6, 40001, 3333)
    assert there != community_id("10.77.0.2", "203.0.113.9", 17, 40000, 3333)


@pytest.mark.parametrize(
    ("src", "dst", "proto", "port"),
    [
        ("10.0.0.1", "::1", 6, 1),
        ("nope", "10.0.0.1", 6, 1),
        ("10.0.0.1", "10.0.0.2", 256, 1),
        ("10.0.0.1", "10.0.0.2", 6, 70000),
    ],
)
def test_refuses_what_is_no_flow(src: str, dst: str, proto: int, port: int) -> None:
    with pytest.raises(ValueError):
        community_id(src, dst, proto, port, 1)
