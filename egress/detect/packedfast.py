"""The compiled twin of `egress.detect.packed`'s search (egress/detect/_packed.c), or nothing.

`COMPILED` is the module when it imports, was built for this file's `ABI` and (in a source tree, where _packed.c
sits beside it) from the _packed.c there now; otherwise ``None``, and packed.py's pure search runs.
``EGRESS_SCAN_PURE=1`` asks for the pure search too (`wanted`).
tests/detect/test_packed_fast.py compares both on every input it has.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
from types import ModuleType
from typing import Final

PURE_ENV: Final = "EGRESS_SCAN_PURE"
"""Set to ``1`` it asks for the pure search (as it asks the scanner for its pure path: egress.capture.hot)."""
ABI: Final = 1
"""The compiled module's interface version (``PACKED_ABI`` in _packed.c): a module built for another is refused."""

log = logging.getLogger(__name__)


def stale(module: object, digest: str | None) -> str | None:
    """Why the compiled module must not run, if it must not: built for another ABI, or (given the SHA-256 of the
    source beside it) from another version of _packed.c."""
    if getattr(module, "ABI", None) != ABI:
        return f"built for ABI {getattr(module, 'ABI', None)}, this egress wants {ABI}"
    if digest is not None and getattr(module, "SOURCE", None) != digest:
        return "built from another version of _packed.c (run deploy/bootstrap.sh or pip install -e . again)"
    return None


def source_digest() -> str | None:
    """The SHA-256 of the _packed.c beside this file; ``None`` where there is none (an installed wheel)."""
    try:
        return hashlib.sha256(pathlib.Path(__file__).with_name("_packed.c").read_bytes()).hexdigest()
    except OSError:
        return None


def _compiled() -> ModuleType | None:
    try:
        from egress.detect import _packed  # type: ignore[attr-defined]
    except ImportError:
        return None
    module: ModuleType = _packed
    why = stale(module, source_digest())
    if why is not None:
        log.warning("egress.detect._packed is stale (%s): the pure search runs", why)
        return None
    return module


COMPILED: Final = _compiled()
"""The compiled module, or ``None`` where it was not built (no C compiler) or is stale."""


def wanted() -> ModuleType | None:
    """The compiled module unless ``EGRESS_SCAN_PURE=1`` asks for the pure search (read at each call)."""
    return None if os.environ.get(PURE_ENV, "") in ("1", "true", "yes") else COMPILED
