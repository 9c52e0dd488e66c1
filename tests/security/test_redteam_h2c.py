"""Red team: Stratum in the DATA frames of clear-text HTTP/2 with prior knowledge (h2c, RFC 9113 §3.3), cut into
frames of a few bytes, to a pool that reads a stream's DATA as one Stratum stream.

Routes: allowed.lab's plain-HTTP port by name (a host rule), and the pool's own address through a network rule
that expects ``[tls, http]``. Ground truth: the pool's log (``share accepted``) and the internet-side capture.

Why it passes: the HTTP/2 preface (``PRI * HTTP/2.0``) is no HTTP/1 request to `egress.detect.http`, so the gate
judges the connection as a raw stream (`Gate._raw`: INSPECT) and mitmproxy's HTTP layer, which would decode
HTTP/2, never sees it. The stream detectors then read the frames as bytes: each 9-byte DATA frame header (length
``00 00 07``, type 0, flags 0, stream ``00 00 00 01``) sits inside the JSON text, and its two non-NUL control
bytes break every value (the JSON readers drop NULs only; `egress.proxy.holdback` ends an open value at a control
byte, so each piece is forwarded at once). The control rows (a whole line per DATA frame) are found, `mining`:
the JSON reader skips the frame header before a whole value. The 16 KiB cap that would call the stream
unidentified on these strict routes comes long after: the whole exchange is under 1 KiB each way. Nothing is
recorded.
"""

from __future__ import annotations

import pytest

from tests.security.harness import Attacker, SecurityLab, report
from tests.security.redteam_http import ROUTES, attempt, judge, pool_fixtures

pytestmark = pytest.mark.security

KIT = "redteam_h2_kit"
lab, pool = pool_fixtures("h2c-pool", KIT)

PIECES = {
    "whole-lines": (4096, ""),
    "7-byte-frames": (7, ""),
    "7-byte-frames-split-preface": (7, "split"),  # tries past the fix: the preface's HTTP/1-looking head alone first
}


@pytest.mark.parametrize("how", list(PIECES.values()), ids=list(PIECES))
@pytest.mark.parametrize("route", sorted(ROUTES))
def test_stratum_in_h2c_data_frames(lab: SecurityLab, pool: Attacker, route: str, how: tuple[int, str]) -> None:
    piece, split = how
    args = (str(piece), *([split] if split else []))
    run = attempt(lab, pool, f"h2c-{route}-{piece}{split}", route, *args, kit=KIT, control=False, reason_wait=10)
    # Clear-text HTTP/2 is refused at its preface (`egress.proxy.gate`, `h2c-not-inspected`): no frame is read.
    report(*run.row(f"redteam/h2c-{route}-{piece}{'-' + split if split else ''}"))
    judge(run, pool, reasons=("tunnel",))
    assert not run.crossed.contains(b"mining.", run.dst), "a Stratum piece crossed"
