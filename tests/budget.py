"""How many examples a property or fuzz test runs: one knob for every generated-input test.

`examples(n)` scales a test's own budget by EGRESS_FUZZ_SCALE (default 1): `make unit` runs a tenth of each
budget for a quick loop, `make test` and CI run the budgets as written, and a long fuzz session raises the scale
(docs/testing.md). A budget never drops below 10, so even the quick loop reaches past the first byte.
"""

import os

_FLOOR = 10


def scale() -> float:
    """The factor from EGRESS_FUZZ_SCALE; a value that is not a positive number is an error, not a silent 1."""
    raw = os.environ.get("EGRESS_FUZZ_SCALE", "1")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"EGRESS_FUZZ_SCALE={raw!r} is not a number") from None
    if value <= 0:
        raise ValueError(f"EGRESS_FUZZ_SCALE={raw!r} must be positive")
    return value


def examples(budget: int) -> int:
    """`budget` examples scaled by EGRESS_FUZZ_SCALE, at least 10."""
    return max(_FLOOR, round(budget * scale()))
