"""Red team 15: attempts timed against the front's handoff, and pool calls where a stream's reader does not look.

Red team 14 made an attempt reset at once recorded (`egress.proxy.lastlook`), and left one window: a reset that
lands after the front's last look and before mitmproxy's first read. The ``window`` rows make many attempts
(Stratum's subscribe and authorize to the pool's allowed address, in one write), each ended after a pause swept
over 0-10 ms, so some land in it wherever it is. Goal (the agent's): an attempt that leaves no record; ground
truth: the records' counts against the attempts made, and the internet side's capture (nothing may cross).

The ``stream`` rows carry the pool's call where a TCP reader does not look: in IPv6 hop-by-hop or destination
options on every packet of an allowed HTTP request, behind a zero receive window held while the gateway works,
and in urgent bytes. Goal: the marker on the internet side, or the attempt unrecorded.

Lab: rules/lab-policy.yaml (the module's shared lab).
"""

from __future__ import annotations

import contextlib
import time

import pytest

from tests.security.harness import SecurityLab, report
from tests.security.redteam_round15_kit import MARK, WINDOW
from tests.waiting import eventually

pytestmark = pytest.mark.security

WINDOW_KIT = "from tests.security.redteam_round15_kit import window_main; window_main()"
STREAM_KIT = "from tests.security.redteam_round15_kit import stream_main; stream_main()"
ATTEMPTS = 400
"""Attempts per window row: each pause of the sweep eight times (on main's code 1 to 3 in 200 went unrecorded)."""
FOUND = {"mining", "tunnel", "inspection-error"}


def _counted(lab: SecurityLab, address: str, port: int) -> int:
    """The attempts recorded to ``address``:``port`` with a finding, ever: a record's count holds the repeats of
    its aggregation window, which may have opened in the row before, so rows compare totals, not records since."""
    records = lab.records(0.0)
    return sum(r.count for r in records if r.dst == address and r.dport == port and str(r.reason) in FOUND)


def _settled(lab: SecurityLab, address: str, port: int) -> int:
    """`_counted` once two readings a second apart agree (a row before may still have updates on the way)."""
    last = [-1]

    def same() -> int:
        now = _counted(lab, address, port)
        before, last[0] = last[0], now
        assert now == before, f"{before} then {now}"
        return now + 1  # truthy when nothing was recorded yet

    return int(eventually(same, timeout=30, interval=1.0)) - 1


@pytest.mark.parametrize("variant", list(WINDOW))
def test_every_attempt_ended_around_the_handoff_is_recorded(security_lab: SecurityLab, variant: str) -> None:
    lab = security_lab
    (address, port), _ = WINDOW[variant]
    before = _settled(lab, address, port)
    with lab.capture(f"rt15-{variant}") as capture:
        done = lab.sandbox_python(WINDOW_KIT, variant, str(ATTEMPTS), timeout=120)
        assert "done" in done.stdout, done.stdout + done.stderr
        made = int(done.stdout.split()[-1])
        seen: list[int] = [0]

        def all_counted() -> bool:
            seen[0] = _counted(lab, address, port) - before
            assert seen[0] >= made, f"{seen[0]} of {made} recorded"
            return True

        with contextlib.suppress(AssertionError):  # judged below, after the row is reported
            eventually(all_counted, timeout=20, interval=1.0)
    crossed = capture.result
    assert crossed is not None
    leaked = crossed.bytes_to(address, port, "tcp")
    unseen = made - seen[0]
    note = f"{seen[0]} of {made} recorded"
    report(f"redteam15/{variant}", "records", leaked, unseen > 0, "mining" if seen[0] else None, note)
    assert made >= ATTEMPTS * 9 // 10, done.stdout
    assert leaked == 0 and not crossed.contains(MARK.encode())
    assert unseen <= 0, note


STREAMS = {
    "v6-hopopts-http": ("2001:db8:10::1", 80, set[str]()),
    "v6-dstopts-http": ("2001:db8:10::1", 80, set[str]()),
    "zero-window-stratum": ("198.18.10.3", 3333, {"mining"}),
    "oob-stratum": ("198.18.10.3", 3333, {"mining"}),
    "tfo-cookie-stratum": ("198.18.10.3", 3333, {"mining"}),
    "bytewise-slow-stratum": ("198.18.10.3", 3333, {"mining"}),
}
"""Each stream row's destination and the reasons its attempt must be recorded with (none: an allowed request
whose extension headers must not cross)."""


@pytest.mark.parametrize("variant", list(STREAMS))
def test_a_call_where_a_stream_reader_does_not_look(security_lab: SecurityLab, variant: str) -> None:
    lab = security_lab
    address, port, wanted = STREAMS[variant]
    since = time.time()
    with lab.capture(f"rt15-{variant}") as capture:
        done = lab.sandbox_python(STREAM_KIT, variant, timeout=30)
        assert "done" in done.stdout, done.stdout + done.stderr
        reasons = lab.reasons_to(since, address, port, timeout=15) if wanted else []
    crossed = capture.result
    assert crossed is not None
    marked = crossed.contains(MARK.encode()) or crossed.contains(b"mining.subscribe")
    unseen = bool(wanted) and not set(reasons) & wanted
    leaked = 0 if not wanted else crossed.bytes_to(address, port, "tcp")
    answer = next((line for line in done.stdout.splitlines() if line.startswith(("answer", "cut"))), "")
    report(f"redteam15/{variant}", "stream", leaked, marked or unseen, ",".join(reasons) or None, answer)
    assert leaked == 0 and not marked
    assert not unseen, reasons
    if not wanted:  # control: the allowed request with its extension headers is served
        assert " 200 " in f"{answer} ", done.stdout
