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
from egress.policy.lists import NameList, load_lists_dir

SHIPPED: Final = Path(__file__).resolve().parents[1] / "rules" / "lists"


@cache
def shipped_list_items() -> tuple[NameList, ...]:
    """The lists in ``rules/lists/`` of this checkout, as loaded (each list's name, category and entries)."""
    return load_lists_dir(SHIPPED)


@cache
def shipped_lists() -> NameLists:
    """The lists in ``rules/lists/`` of this checkout, ready for the detectors (built on the first call)."""
    return NameLists(shipped_list_items())
