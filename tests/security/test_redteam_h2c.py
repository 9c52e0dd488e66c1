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

import sys
import time

import pytest

from egress.lab.topology import server
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, SecurityLab, report

pytestmark = pytest.mark.security

POOL = server("pool").v4
ALLOWED = server("allowed").v4
ROUTES = {
    "network-rule": (POOL, 3380, POOL),
    "host-rule": ("-", 8080, "allowed.lab"),
}
_KIT = "from tests.security.redteam_h2_kit import {0}; {0}()"


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "redteam.yaml")


@pytest.fixture(scope="module")
def pool(lab: SecurityLab) -> Attacker:
    running = lab.attacker(
        "h2c-pool", [sys.executable, "-c", _KIT.format("pool_main"), f"{POOL}:3380", f"{ALLOWED}:8080"]
    )
    running.wait_for("listening")
    return running


PIECES = {
    "whole-lines": (4096, ""),
    "7-byte-frames": (7, ""),
    "7-byte-frames-split-preface": (7, "split"),  # tries past the fix: the preface's HTTP/1-looking head alone first
}


@pytest.mark.parametrize("how", list(PIECES.values()), ids=list(PIECES))
@pytest.mark.parametrize("route", sorted(ROUTES))
def test_stratum_in_h2c_data_frames(lab: SecurityLab, pool: Attacker, route: str, how: tuple[int, str]) -> None:
    address, port, host = ROUTES[route]
    piece, split = how
    before = pool.log().count("share accepted")
    since = time.time()
    with lab.capture(f"h2c-{route}-{piece}{split}") as capture:
        args = (address, str(port), host, str(piece), *([split] if split else []))
        done = lab.sandbox_python(_KIT.format("miner_main"), *args, timeout=60)
    crossed = capture.result
    assert crossed is not None
    shares = pool.log().count("share accepted") - before
    goal = shares > 0 and "share answered" in done.stdout
    dst = POOL if route == "network-rule" else ALLOWED
    reason = lab.reason_of(since, lambda r: r.dport == port and r.action == "block", timeout=10)
    report(
        f"redteam/h2c-{route}-{piece}{'-' + split if split else ''}",
        "mining",
        crossed.bytes_to(dst, port, "tcp") if goal else 0,
        goal,
        reason or None,
    )
    assert not goal, f"the pool accepted {shares} share(s): {done.stdout[-600:]}\npool: {pool.log()[-600:]}"
    # Clear-text HTTP/2 is refused at its preface (`egress.proxy.gate`, `h2c-not-inspected`): no frame is read.
    assert reason == "tunnel", (reason, done.stdout[-600:], pool.log()[-600:])
    assert not crossed.contains(b"mining.", dst), "a Stratum piece crossed"
