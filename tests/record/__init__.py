"""Tests of egress/record; `record` builds a valid attempt record for them."""

from __future__ import annotations

import itertools
from typing import Any

from egress.record.schema import AttemptRecord, make_id

_counter = itertools.count(1)


def record(ts: float = 1_700_000_000.0, **overrides: Any) -> AttemptRecord:
    """A valid stratum block with a fresh id; any field may be overridden."""
    fields: dict[str, Any] = {
        "id": make_id(ts, next(_counter).to_bytes(10, "big")),
        "ts": ts,
        "gateway": "gw1",
        "sandbox": "agents",
        "src": "10.77.0.2",
        "sport": 40000,
        "dst": "203.0.113.9",
        "dport": 3333,
        "transport": "tcp",
        "host": "",
        "category": "mining",
        "protocol": "stratum-v1",
        "reason": "mining",
        "detector": "stratum",
        "rule": "",
        "action": "block",
        "evidence": '{"method":"mining.subscribe"}',
    }
    fields.update(overrides)
    return AttemptRecord(**fields)
