"""The suite's shared test machinery; the helpers themselves live in importable modules beside it.

- Waiting: `eventually` and `scaled` (tests/waiting.py), with timeouts stretched by ``EGRESS_TEST_TIME_FACTOR``.
"""

from __future__ import annotations

from tests.waiting import eventually, scaled

__all__ = ["eventually", "scaled"]
