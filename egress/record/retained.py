"""What the record store holds of each sandbox and what its retention dropped (docs/records.md "Retention"): read
from each sandbox's state hash (`layout.state_key`), which the write script keeps (`egress.record.delivery`). A
record the size or age retention dropped is gone, but not unknown: how many, and how many of them findings, stays
counted here, so a trimmed history is told from a quiet one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from egress.record.layout import state_key
from egress.record.store import RecordStore


@dataclass(frozen=True, slots=True)
class Retained:
    """One sandbox's records: held now, and dropped since its first record."""

    records: int
    """Records held (findings and policy records)."""
    findings: int
    """Of those, findings (mining, tunnels: each kind has its own size budget)."""
    trimmed_by_size: int
    """Records the size retention (``max_records``, per kind) dropped."""
    trimmed_findings_by_size: int
    trimmed_by_age: int
    """Records the age retention (``max_age``) dropped."""
    trimmed_findings_by_age: int

    @classmethod
    def from_state(cls, state: dict[str, str]) -> Retained:
        def number(field: str) -> int:
            return int(state.get(field, 0))

        return cls(
            number("records"),
            number("findings"),
            number("trimmed-size"),
            number("trimmed-size-findings"),
            number("trimmed-age"),
            number("trimmed-age-findings"),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def retained(store: RecordStore, sandboxes: Sequence[str]) -> dict[str, Retained]:
    """Each of ``sandboxes``' `Retained`, in one round trip (a sandbox with no records: all zero)."""
    states = store.redis.hgetall_each([state_key(name) for name in sandboxes])
    return {name: Retained.from_state(state) for name, state in zip(sandboxes, states, strict=True)}
