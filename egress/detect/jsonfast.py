"""The compiled twin of the JSON-RPC reader's byte work (egress/detect/_jsonfast.c), or nothing.

Two functions run on every undecided flow's new bytes (`egress.detect.jsonrpc`): `decode` (what a lenient JSON
reader makes of bytes: NULs and byte-order marks dropped, ASCII escapes decoded) and the search for where a prefix
stops changing when more bytes come (`Reading.decode`'s last inert byte). _jsonfast.c does both in C; their
pure-Python twins (`jsonrpc.pure_decode`, `jsonrpc.pure_inert_end`) give the same answer for every input
(tests/detect/test_jsonfast.py compares them). `COMPILED` is the module when it imports and was built for this
file's `ABI`; otherwise ``None`` and the pure twins run (and where the scanner is asked for its pure path,
``EGRESS_SCAN_PURE=1``, it makes `jsonrpc.use_compiled` run them too: this stage reads no environment). The
module also carries the SHA-256 of the source it was built from
(``SOURCE``): the test suite checks it against the _jsonfast.c beside it (a build older than its source fails
there, and `stale` says why). docs/scanner-hot-path.md (scan18) has the figures.
"""

from __future__ import annotations

from types import ModuleType
from typing import Final

ABI: Final = 1
"""The compiled module's interface version (``JSONFAST_ABI`` in _jsonfast.c): a module built for another is refused."""


def stale(module: object, digest: str | None = None) -> str | None:
    """Why the compiled module must not run, if it must not: built for another ABI, or (given the SHA-256 of the
    source beside it) from another version of _jsonfast.c."""
    if getattr(module, "ABI", None) != ABI:
        return f"built for ABI {getattr(module, 'ABI', None)}, this egress wants {ABI}"
    if digest is not None and getattr(module, "SOURCE", None) != digest:
        return "built from another version of _jsonfast.c (run deploy/bootstrap.sh or pip install -e . again)"
    return None


def _compiled() -> ModuleType | None:
    try:
        from egress.detect import _jsonfast  # type: ignore[attr-defined]
    except ImportError:
        return None
    module: ModuleType = _jsonfast
    return None if stale(module) is not None else module


COMPILED: Final = _compiled()
"""The compiled module, or ``None`` where it was not built (no C compiler) or was built for another ABI."""
