"""The compiled twin of `egress.detect.packed`'s search (egress/detect/_packed.c), or nothing.

`COMPILED` is the module when it imports and was built for this file's `ABI`; otherwise ``None``, and packed.py's
pure search runs. The module also carries the SHA-256 of the source it was built from (``SOURCE``): this pure
stage reads no files, so the test suite checks it against the _packed.c beside it (a build older than its source
fails there, and `stale` says why), as for egress.detect.tlsfast. `egress scan` runs the pure search with its
pure hot path (``EGRESS_SCAN_PURE=1``: the CLI calls `choose`). tests/detect/test_packed_fast.py compares both
searches on every input it has.
"""

from __future__ import annotations

from types import ModuleType
from typing import Final

ABI: Final = 1
"""The compiled module's interface version (``PACKED_ABI`` in _packed.c): a module built for another is refused."""


def stale(module: object, digest: str | None) -> str | None:
    """Why the compiled module must not run, if it must not: built for another ABI, or (given the SHA-256 of the
    source beside it) from another version of _packed.c."""
    if getattr(module, "ABI", None) != ABI:
        return f"built for ABI {getattr(module, 'ABI', None)}, this egress wants {ABI}"
    if digest is not None and getattr(module, "SOURCE", None) != digest:
        return "built from another version of _packed.c (run deploy/bootstrap.sh or pip install -e . again)"
    return None


def _compiled() -> ModuleType | None:
    try:
        from egress.detect import _packed  # type: ignore[attr-defined]
    except ImportError:
        return None
    module: ModuleType = _packed
    return None if stale(module, None) is not None else module


COMPILED: Final = _compiled()
"""The compiled module, or ``None`` where it was not built (no C compiler) or was built for another ABI."""

_chosen: list[ModuleType | None] = [COMPILED]


def choose(compiled: bool) -> None:
    """Run the compiled search where it is built (True), or the pure one (False: the scan's pure path)."""
    _chosen[0] = COMPILED if compiled else None


def wanted() -> ModuleType | None:
    """The compiled module, unless it is not built or `choose` asked for the pure search."""
    return _chosen[0]
