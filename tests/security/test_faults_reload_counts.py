"""A reload right after a flood loses none of the flood's count (a real ``egress gateway run``, SIGHUP).

Most of a flood's drops are not logged (the log is rate-limited per key) but counted by the kernel, and the drop
logger reads those counters a generation a second (`egress.gateway.dropread`). A reload used to delete the table
and declare it anew, emptying both generations: what was counted since the logger's last swap and the retired
generation not yet read, about two seconds of a flood (docs/nftables.md, "A reload and the lockdown keep the
counters"). Here the agent sends `PACKETS` datagrams to each of `DESTINATIONS` at once, the policy file is changed
and the gateway told to reload at once, and the records in the lab's Redis must count every datagram exactly once,
none crossing (judged on a capture on the internet side).

The same for the lockdown with the drop logger dead: its thread is killed right after a flood (the fault hook), the
supervisor locks the gateway down, replaces the dead logger and unlocks. The lockdown keeps the counters, and the
dead logger's stop reads both generations and settles them against what it had logged: every datagram once.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import signal
import time

import pytest

from egress.gateway.components import FAULT_HOOKS_ENV
from egress.record.schema import AttemptRecord
from tests.security.harness import ROOT, SecurityLab, open_lab, report
from tests.waiting import eventually, scaled

pytestmark = pytest.mark.security

DESTINATIONS = [f"198.18.30.{n}" for n in range(1, 5)]
PACKETS = 1000
"""Datagrams to each destination: 50 times a key's log burst, so most are only counted."""
FLOOD = r"""
import socket, sys, time
port, count, destinations = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for dst in destinations:
    sent = 0
    while sent < count:
        try:
            s.sendto(b"RELOAD-FLOOD", (dst, port))
        except OSError:  # ENOBUFS: not sent, try again
            time.sleep(0.001)
            continue
        sent += 1
print("sent", count * len(destinations), flush=True)
"""


def test_a_reload_right_after_a_flood_keeps_its_whole_count(tmp_path: pathlib.Path) -> None:
    original = (ROOT / "rules" / "lab-policy.yaml").read_text()
    policy = tmp_path / "policy.yaml"
    policy.write_text(original)
    port = 7101
    with open_lab(policy) as lab:
        since = time.time()
        log = lab.logs / "gateway.log"
        with lab.capture("reload-flood") as capture:
            done = lab.sandbox_python(FLOOD, str(port), str(PACKETS), ",".join(DESTINATIONS), timeout=120)
            fresh = policy.with_suffix(".tmp")
            reloaded = original + "# reloaded right after a flood\n"  # another version, the same rules
            fresh.write_text(reloaded)
            fresh.replace(policy)
            assert lab.run.gateway is not None
            lab.run.gateway.send_signal(signal.SIGHUP)
            label = f"sha256:{hashlib.sha256(reloaded.encode()).hexdigest()[:16]}"
            eventually(lambda: f"policy {label} from" in log.read_text(), timeout=60, interval=0.1)
        assert f"sent {PACKETS * len(DESTINATIONS)}" in done.stdout, done.stdout + done.stderr
        crossed = capture.result
        assert crossed is not None

        found = _recorded(lab, since)
    leaked = sum(crossed.packets_to(dst) for dst in DESTINATIONS)
    note = f"{sum(found.values())} of {PACKETS * len(DESTINATIONS)} recorded across a reload: {found}"
    report(
        "reload/flood-then-sighup",
        "recording",
        leaked,
        found != dict.fromkeys(DESTINATIONS, PACKETS),
        "firewall-drop",
        note,
    )
    assert leaked == 0, crossed.table()
    assert found == dict.fromkeys(DESTINATIONS, PACKETS), note


def _counted(records: list[AttemptRecord]) -> dict[str, int]:
    return {dst: sum(r.count for r in records if r.dst == dst) for dst in DESTINATIONS}


def _recorded(lab: SecurityLab, since: float) -> dict[str, int]:
    """Datagrams recorded per destination once all are (or what there is after the wait)."""

    def complete(records: list[AttemptRecord]) -> bool:
        assert _counted(records) == dict.fromkeys(DESTINATIONS, PACKETS), _counted(records)
        return True

    try:
        return _counted(lab.records_until(since, complete, timeout=90))
    except AssertionError:
        return _counted(lab.records(since))


def test_the_lockdown_with_the_drop_logger_dead_keeps_a_flood_s_whole_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_HOOKS_ENV, "drop-logger")  # this lab's gateway takes SIGUSR1 as "that thread dies"
    port = 7102
    with open_lab() as lab:
        since = time.time()
        log = lab.logs / "gateway.log"
        with lab.capture("lockdown-flood") as capture:
            done = lab.sandbox_python(FLOOD, str(port), str(PACKETS), ",".join(DESTINATIONS), timeout=120)
            assert lab.run.gateway is not None
            os.kill(lab.run.gateway.pid, signal.SIGUSR1)
            eventually(lambda: "drop logger recovered in" in log.read_text(), timeout=scaled(120), interval=0.2)
        assert f"sent {PACKETS * len(DESTINATIONS)}" in done.stdout, done.stdout + done.stderr
        text = log.read_text()
        assert "LOCKDOWN" in text.split("drop logger is down", 1)[1], text[-2000:]
        crossed = capture.result
        assert crossed is not None
        found = _recorded(lab, since)
    leaked = sum(crossed.packets_to(dst) for dst in DESTINATIONS)
    note = f"{sum(found.values())} of {PACKETS * len(DESTINATIONS)} recorded across the logger's death: {found}"
    wrong = found != dict.fromkeys(DESTINATIONS, PACKETS)
    report("lockdown/flood-then-drop-logger-dies", "recording", leaked, wrong, "firewall-drop", note)
    assert leaked == 0, crossed.table()
    assert found == dict.fromkeys(DESTINATIONS, PACKETS), note
