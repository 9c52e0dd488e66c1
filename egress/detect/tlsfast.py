"""The compiled twin of the front's per-connection TLS work (egress/detect/_tlsfast.c), or nothing.

Three functions run for every connection the front takes: the ClientHello's parse (`egress.detect.tls`), the
ServerHello's parse and the record framing of the relay's shape watcher (`egress.detect.tlsshape.TlsShape.feed`).
_tlsfast.c does all three in C;
their pure-Python twins stay where they were and give the same answer for every input
(tests/detect/test_tlsfast.py compares them). `COMPILED` is the module when it imports and was built for this
file's `ABI`; otherwise ``None`` and the pure twins run (no C compiler where egress was installed). The module
also carries the SHA-256 of the source it was built from (``SOURCE``): this pure stage reads no files, so the test
suite checks it against the _tlsfast.c beside it (a build older than its source fails there, and `stale` says
why). docs/gateway-performance.md has the figures.
"""

from __future__ import annotations

from types import ModuleType
from typing import Final

ABI: Final = 2
"""The compiled module's interface version (``TLSFAST_ABI`` in _tlsfast.c): a module built for another is refused."""


def stale(module: object, digest: str | None = None) -> str | None:
    """Why the compiled module must not run, if it must not: built for another ABI, or (given the SHA-256 of the
    source beside it) from another version of _tlsfast.c."""
    if getattr(module, "ABI", None) != ABI:
        return f"built for ABI {getattr(module, 'ABI', None)}, this egress wants {ABI}"
    if digest is not None and getattr(module, "SOURCE", None) != digest:
        return "built from another version of _tlsfast.c (run deploy/bootstrap.sh or pip install -e . again)"
    return None


def _compiled() -> ModuleType | None:
    try:
        from egress.detect import _tlsfast  # type: ignore[attr-defined]
    except ImportError:
        return None
    module: ModuleType = _tlsfast
    return None if stale(module) is not None else module


COMPILED: Final = _compiled()
"""The compiled module, or ``None`` where it was not built (no C compiler) or was built for another ABI."""
