"""The compiled twin of binrpc's per-prefix byte searches (egress/detect/_binfast.c), or nothing.

Three searches run on every undecided flow's new bytes (`egress.detect.binrpc`): where an ASN.1 BER constructed
string may start (`_BER_HEAD`), which ``ff`` bytes may end a CBOR chunked name, and whether the bytes hold a
name's anchor in any case (`_ANCHORS`). _binfast.c does each in one pass over the bytes; their pure-Python twins
(`binrpc.pure_ber_heads`, `binrpc.pure_breaks`, `binrpc.pure_anchored`) give the same answer for every input
(tests/detect/test_binfast.py compares them). `COMPILED` is the module when it imports and was built for this
file's `ABI`; otherwise ``None`` and the pure twins run (and where the scanner is asked for its pure path,
``EGRESS_SCAN_PURE=1``, it makes `binrpc.use_compiled` run them too: this stage reads no environment). The module
also carries the SHA-256 of the source it was built from (``SOURCE``): the test suite checks it against the
_binfast.c beside it (a build older than its source fails there, and `stale` says why). docs/scanner-hot-path.md
(scanc) has the figures.
"""

from __future__ import annotations

from types import ModuleType
from typing import Final

ABI: Final = 2
"""The compiled module's interface version (``BINFAST_ABI`` in _binfast.c): a module built for another is refused."""


def stale(module: object, digest: str | None = None) -> str | None:
    """Why the compiled module must not run, if it must not: built for another ABI, or (given the SHA-256 of the
    source beside it) from another version of _binfast.c."""
    if getattr(module, "ABI", None) != ABI:
        return f"built for ABI {getattr(module, 'ABI', None)}, this egress wants {ABI}"
    if digest is not None and getattr(module, "SOURCE", None) != digest:
        return "built from another version of _binfast.c (run deploy/bootstrap.sh or pip install -e . again)"
    return None


def _compiled() -> ModuleType | None:
    try:
        from egress.detect import _binfast  # type: ignore[attr-defined]
    except ImportError:
        return None
    module: ModuleType = _binfast
    return None if stale(module) is not None else module


COMPILED: Final = _compiled()
"""The compiled module, or ``None`` where it was not built (no C compiler) or was built for another ABI."""
