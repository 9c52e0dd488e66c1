"""A reload right after a flood loses none of the flood's count (a real ``egress gateway run``, SIGHUP).

Most of a flood's drops are not logged (the log is rate-limited per key) but counted by the kernel, and the drop
logger reads those counters a generation a second (`egress.gateway.dropread`). A reload used to delete the table
and declare it anew, emptying both generations: what was counted since the logger's last swap and the retired
generation not yet read, about two seconds of a flood (docs/nftables.md, "A reload and the lockdown keep the
counters"). Here the agent sends `PACKETS` datagrams to each of `DESTINATIONS` at once, the policy file is changed
and the gateway told to reload at once, and the records in the lab's Redis must count every datagram exactly once,
none crossing (judged on a capture on the internet side).
"""

from __future__ import annotations

import hashlib
import pathlib
import signal
import time

import pytest

from egress.record.schema import AttemptRecord
from tests.security.harness import ROOT, open_lab, report
from tests.waiting import eventually

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

        def counted(records: list[AttemptRecord]) -> dict[str, int]:
            return {dst: sum(r.count for r in records if r.dst == dst) for dst in DESTINATIONS}

        def complete(records: list[AttemptRecord]) -> bool:
            assert counted(records) == dict.fromkeys(DESTINATIONS, PACKETS), counted(records)
            return True

        try:
            records = lab.records_until(since, complete, timeout=90)
        except AssertionError:
            records = lab.records(since)
    found = counted(records)
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
