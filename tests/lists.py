"""The name lists shipped in ``rules/lists/``, loaded once per test process and shared.

Loading and validating them costs about a seventh of a second of CPU; the proxy tests built a gate, and so loaded
them, for nearly every test (a tenth of ``make unit``'s CPU). `NameLists` is read-only, so one copy serves every
test that reads the shipped lists; a test about loading (a changed or broken file) calls the loader itself.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Final

from egress.detect.names import NameLists
from egress.policy.lists import load_name_lists

SHIPPED: Final = Path(__file__).resolve().parents[1] / "rules" / "lists"


@cache
def shipped_lists() -> NameLists:
    """The lists in ``rules/lists/`` of this checkout (loaded on the first call of the process)."""
    return load_name_lists(SHIPPED)
