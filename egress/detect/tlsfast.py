"""The compiled twin of the front's per-connection TLS work (egress/detect/_tlsfast.c), or nothing.

Two functions run for every connection the front takes: the ClientHello's parse (`egress.detect.tls`) and the
record framing of the relay's shape watcher (`egress.detect.tlsshape.TlsShape.feed`). _tlsfast.c does both in C;
their pure-Python twins stay where they were and give the same answer for every input
(tests/detect/test_tlsfast.py compares them). `COMPILED` is the module when it imports, was built for this
file's `ABI` and (in a source tree, where _tlsfast.c sits beside it) from the very source there now; otherwise
``None`` and the pure twins run, as they do with ``EGRESS_TLS_PURE=1``. docs/gateway-performance.md has the
figures.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
from types import ModuleType
from typing import Final

ABI: Final = 1
"""The compiled module's interface version (``TLSFAST_ABI`` in _tlsfast.c): a module built from another is stale."""
PURE_ENV: Final = "EGRESS_TLS_PURE"

log = logging.getLogger(__name__)


def stale(module: object, source: pathlib.Path | None = None) -> str | None:
    """Why the compiled module must not run, if it must not: built for another ABI, or from another version of
    _tlsfast.c than the one beside this file (an installed wheel carries no source: nothing to compare with)."""
    if getattr(module, "ABI", None) != ABI:
        return f"built for ABI {getattr(module, 'ABI', None)}, this egress wants {ABI}"
    source = source or pathlib.Path(__file__).with_name("_tlsfast.c")
    try:
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
    except OSError:
        return None
    if getattr(module, "SOURCE", None) != digest:
        return f"built from another version of {source} (run deploy/bootstrap.sh or pip install -e . again)"
    return None


def _compiled() -> ModuleType | None:
    if os.environ.get(PURE_ENV, "") in ("1", "true", "yes"):
        return None
    try:
        from egress.detect import _tlsfast  # type: ignore[attr-defined]
    except ImportError:
        return None
    module: ModuleType = _tlsfast
    why = stale(module)
    if why is not None:
        log.warning("egress.detect._tlsfast is stale (%s): the pure TLS path runs", why)
        return None
    return module


COMPILED: Final = _compiled()
"""The compiled module, or ``None`` where it was not built (no C compiler), is stale or ``EGRESS_TLS_PURE=1``."""
