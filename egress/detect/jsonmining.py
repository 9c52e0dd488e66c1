"""The four JSON-RPC mining detectors (`stratum`, `cryptonote`, `ethstratum`, `getwork`) run as one detector.

Each of the four is ``jsonrpc.drive_sides(view, its _match)``: the same two readings of the flow's sides, then its
matcher on each side it has not answered None for. Run one after the other by the engine they made four calls and
four readings' checks per run of every undecided flow; `detect` makes one, and asks the four matchers in the same
order (each the client's side, then the server's), so every answer is theirs (docs/scanner-hot-path.md, scan23):

- a finding is the first of the four's, in their order; each finds mining only, which ends a run of the engine (and
  is returned first by `egress.detect.datagrams`, the WebSocket detector's inner loop and the proxy), so the
  detectors after the one that found it were not asked before either;
- None and `MORE` are the same for all four (None once both sides are shown to be another protocol, or the flow
  ended without a finding; `MORE` otherwise), so the four were always dropped together.

tests/detect/test_jsonmining.py holds it to the four run in turn by the engine, on generated and corpus flows.
"""

from __future__ import annotations

from typing import Final

from egress.detect import cryptonote, ethstratum, getwork, jsonrpc, stratum
from egress.detect.base import FlowView, Result

MATCHERS: Final[tuple[jsonrpc.SideMatcher, ...]] = (
    stratum._match,
    cryptonote._match,
    ethstratum._match,
    getwork._match,
)
"""The side matchers of `stratum`, `cryptonote`, `ethstratum` and `getwork`, in the registry's order."""
DETECTORS: Final = (stratum.detect, cryptonote.detect, ethstratum.detect, getwork.detect)
"""The four detectors `detect` stands for, in the same order."""


def detect(view: FlowView) -> Result:
    """`stratum.detect`, `cryptonote.detect`, `ethstratum.detect` and `getwork.detect` in turn, as one."""
    return jsonrpc.drive_each(view, MATCHERS)
