"""Faults against record keeping (issue 10, points 1 and 5), judged by the records in the lab's real Redis against
what the agent saw: a load of blocked HTTP attempts, each to a destination of its own (a unique Host) and repeated
`REPEATS` times, so each is one record whose count is known from the agent's side.

- SIGTERM of the gateway: every blocked attempt is in Redis exactly once with its count.

Each proxy worker aggregates the connections it handled: a destination tried through two workers has a record
from each (never more) for each second its attempts span (a worker names a blocked attempt's record when it
decides, one record a second, `egress.record.naming.BUCKET`, so the 403 can say which), and their counts add up to
the attempts; no record id is stored twice.
- SIGKILL of one proxy worker: every attempt made before the fault is in Redis; a count may be short by the
  repeats of the last `UPDATE_MARGIN` seconds (what a killed process held: one update interval and a tick).
- a full spool on a small tmpfs while Redis is away: records counted as lost, few log lines, and once Redis is
  back the spool drains completely and nothing is stored twice.
"""

from __future__ import annotations

import collections
import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from egress.lab import netns
from egress.lab.demo import REDIS_PORT
from egress.record.naming import BUCKET
from egress.record.schema import AttemptRecord, id_time
from tests.security.harness import Attacker, SecurityLab, open_lab, report_fault
from tests.security.test_faults import leaked_bytes
from tests.waiting import eventually, scaled

pytestmark = pytest.mark.security

MARKER = "egress-records-fault-5b1e"
REPEATS = 3
UPDATE_MARGIN = 1.5
"""Seconds before a kill whose repeats may be missing: the update interval (1 s), a tick and a write."""

LOAD = r"""
import json, socket, sys, time
marker, repeats, pad = sys.argv[1], int(sys.argv[2]), "x" * int(sys.argv[3])
for n in range(1000000):
    host = "u%d-%s.blocked.lab" % (n, pad)
    for r in range(repeats):
        start = time.time()
        try:
            with socket.create_connection(("198.18.10.2", 80), timeout=2) as s:
                s.settimeout(2)
                s.sendall(("GET /%s HTTP/1.1\r\nHost: %s\r\n\r\n" % (marker, host)).encode())
                line = s.recv(4096).split(b"\r\n", 1)[0]
            out = "blocked" if b" 403" in line else "answer:%r" % line[:30]
        except Exception as e:
            out = type(e).__name__
        print(json.dumps({"host": host, "start": start, "end": time.time(), "out": out}), flush=True)
"""


def _attempts(load: Attacker) -> list[dict[str, object]]:
    return [json.loads(line) for line in load.log().splitlines() if line.startswith("{")]


def _blocked(load: Attacker, count: int) -> None:
    def enough() -> bool:
        done = sum(item["out"] == "blocked" for item in _attempts(load))
        assert done >= count, f"{done} blocked attempts so far: {load.log()[-600:]}"
        return True

    eventually(enough, timeout=90, interval=0.2)


def _by_host(records: list[AttemptRecord]) -> dict[str, list[AttemptRecord]]:
    found: dict[str, list[AttemptRecord]] = collections.defaultdict(list)
    for record in records:
        if record.host.startswith("u") and record.host.endswith(".blocked.lab"):
            found[record.host].append(record)
    return found


def _judge(records: dict[str, list[AttemptRecord]], workers: int) -> tuple[list[str], dict[str, int]]:
    """Ids stored more than once (an exactly-once failure), and each host's total count. Each worker aggregates the
    connections it handled, so a host tried through several workers has a record from each (at most one per
    worker); the counts add up."""
    ids = collections.Counter(record.id for found in records.values() for record in found)
    twice = sorted(record_id for record_id, seen in ids.items() if seen > 1)
    per_bucket = collections.Counter(
        (host, math.floor(id_time(record.id) / BUCKET)) for host, found in records.items() for record in found
    )
    spread = sorted({host for (host, _), seen in per_bucket.items() if seen > workers})
    assert not spread, f"more records than workers in one naming bucket for {spread[:3]}"
    return twice, {host: sum(record.count for record in found) for host, found in records.items()}


def _tally(load: Attacker, before: float = float("inf")) -> tuple[dict[str, int], dict[str, int]]:
    """Per host: attempts the gateway answered as blocked, and attempts whose fate the agent does not know (an
    error: the gateway may have decided before it went)."""
    blocked: collections.Counter[str] = collections.Counter()
    unknown: collections.Counter[str] = collections.Counter()
    for item in _attempts(load):
        if float(str(item["end"])) > before:
            continue
        host = str(item["host"])
        if item["out"] == "blocked":
            blocked[host] += 1
        elif not str(item["out"]).startswith("answer"):
            unknown[host] += 1
    return dict(blocked), dict(unknown)


def _in_flight(load: Attacker, unknown: dict[str, int]) -> None:
    """The agent was stopped last: the attempt it had under way then (decided and recorded, perhaps, but never
    logged by the agent) is one more whose fate it does not know."""
    attempts = _attempts(load)
    if attempts:
        last = str(attempts[-1]["host"])
        next_host = f"u{int(last[1:].split('-', maxsplit=1)[0]) + 1}-{last.split('-', 1)[1]}"
        in_flight = last if sum(1 for a in attempts if a["host"] == last) < REPEATS else next_host
        unknown[in_flight] = unknown.get(in_flight, 0) + 1


def _gateway_pid(lab: SecurityLab) -> int:
    assert lab.run.gateway is not None
    return lab.run.gateway.pid


def _worker_pids(lab: SecurityLab) -> list[int]:
    done = subprocess.run(["ip", "netns", "pids", lab.lab.gateway_ns], capture_output=True, text=True, check=False)
    found = []
    for pid in map(int, done.stdout.split()):
        try:
            if b"egress.gateway.worker" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


@pytest.fixture
def lab() -> Iterator[SecurityLab]:
    with open_lab() as opened:
        yield opened


def _start_load(lab: SecurityLab, pad: int = 8) -> Attacker:
    load = lab.attacker("records-load", [sys.executable, "-c", LOAD, MARKER, str(REPEATS), str(pad)], where="sandbox")
    _blocked(load, 30)
    return load


def test_sigterm_of_the_gateway_keeps_every_attempt_once_with_its_count(lab: SecurityLab) -> None:
    since = time.time()
    with lab.capture("records-sigterm") as capture:
        load = _start_load(lab)
        _blocked(load, 300)
        assert lab.run.gateway is not None
        lab.run.gateway.send_signal(signal.SIGTERM)
        lab.run.gateway.wait(timeout=scaled(30))
        load.stop()
    blocked, unknown = _tally(load)
    _in_flight(load, unknown)
    records = _by_host(lab.records(since))
    twice, totals = _judge(records, lab.run.workers)
    missing = sorted(host for host in blocked if host not in records)
    wrong = sorted(
        host
        for host, total in totals.items()
        if not blocked.get(host, 0) <= total <= blocked.get(host, 0) + unknown.get(host, 0)
    )
    assert capture.result is not None
    leaked = leaked_bytes(capture.result)
    note = (
        f"{sum(blocked.values())} blocked attempts to {len(blocked)} destinations: {len(missing)} missing, "
        f"{len(twice)} ids stored twice, {len(wrong)} with a wrong count (exit {lab.run.gateway.returncode})"
    )
    report_fault("records (gateway SIGTERM)", 1, int(leaked == 0), leaked, "n/a", note)
    assert leaked == 0
    details = [(host, blocked.get(host, 0), unknown.get(host, 0), totals[host]) for host in wrong[:3]]
    assert not missing and not twice and not wrong, f"{note}: {missing[:3]} {twice[:3]} {details}"


def test_sigkill_of_a_proxy_worker_keeps_every_attempt_made_before_it(lab: SecurityLab) -> None:
    since = time.time()
    with lab.capture("records-sigkill") as capture:
        load = _start_load(lab)
        _blocked(load, 300)
        [pid, *_] = _worker_pids(lab)
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        assert lab.run.gateway is not None

        def replaced() -> bool:  # the supervisor locks down, starts a new worker, and opens again (issue 10)
            pids = _worker_pids(lab)
            assert pid not in pids and len(pids) == lab.run.workers, pids
            return True

        eventually(replaced, timeout=scaled(60), interval=0.2)
        load.stop()
    settled, _ = _tally(load, before=killed_at - UPDATE_MARGIN)
    blocked, unknown = _tally(load)
    _in_flight(load, unknown)  # (CI on a loaded machine: the load's last attempt was recorded, never logged)
    records = _by_host(lab.records(since))
    twice, totals = _judge(records, lab.run.workers)
    missing = sorted(host for host in settled if host not in records)
    short = {host: settled[host] - totals[host] for host in settled if host in totals}
    over = sorted(host for host, total in totals.items() if total > blocked.get(host, 0) + unknown.get(host, 0))
    late = [host for host in blocked if host not in settled]
    assert capture.result is not None
    leaked = leaked_bytes(capture.result)
    note = (
        f"{sum(settled.values())} attempts to {len(settled)} destinations made over {UPDATE_MARGIN} s before the "
        f"kill: {len(missing)} missing, {len(twice)} ids twice, {sum(v > 0 for v in short.values())} counts short "
        f"(allowed: the last {UPDATE_MARGIN} s of repeats); of {len(late)} destinations tried later, "
        f"{sum(host in records for host in late)} recorded"
    )
    report_fault("records (proxy worker SIGKILL)", 1, int(leaked == 0), leaked, "n/a", note)
    assert leaked == 0
    assert not missing and not twice and not over, f"{note}: {missing[:3]} {twice[:3]} {over[:3]}"


def _redis_pid(lab: SecurityLab) -> int:
    done = subprocess.run(["ip", "netns", "pids", lab.lab.gateway_ns], capture_output=True, text=True, check=False)
    for pid in map(int, done.stdout.split()):
        try:
            if b"redis-server" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]:
                return pid
        except OSError:
            continue
    raise AssertionError("no redis-server in the lab")


def _restart_redis(lab: SecurityLab) -> None:
    argv = [shutil.which("redis-server") or "redis-server", "--port", str(REDIS_PORT), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "yes", "--dir", str(lab.run.state)]
    log = (lab.logs / "redis-restarted.log").open("wb")
    process = netns.popen_in(lab.lab.gateway_ns, argv, stdout=log, stderr=subprocess.STDOUT)
    assert lab.run.processes is not None
    lab.run.processes.append(process)  # stopped with the lab
    eventually(lambda: lab.gateway(["redis-cli", "-p", str(REDIS_PORT), "ping"]).stdout.strip() == "PONG", 30)


def _outage_with_a_full_spool(lab: SecurityLab, seen_spool: pathlib.Path) -> tuple[Attacker, float, float, float]:
    """Under load, Redis stopped until the spool's disk is full and records are lost, then started again; wait
    until the spool is drained. Returns the load, when Redis went, when it came back, how long the drain took."""
    load = _start_load(lab, pad=50)
    os.kill(_redis_pid(lab), signal.SIGTERM)  # Redis's own AOF complete: what it lacks later is ours
    outage = time.time()
    gateway_log = lab.logs / "gateway.log"
    eventually(lambda: "records lost" in gateway_log.read_text(errors="replace"), timeout=120, interval=0.5)
    _blocked(load, sum(item["out"] == "blocked" for item in _attempts(load)) + 60)  # more lost meanwhile
    _restart_redis(lab)
    back = time.time()

    def drained() -> bool:
        left = sorted(str(path.name) for path in seen_spool.rglob("seg-*") if path.stat().st_size)
        assert not left, f"spool not drained: {left}"
        return True

    eventually(drained, timeout=60, interval=0.5)
    recovery = time.time() - back
    _blocked(load, sum(item["out"] == "blocked" for item in _attempts(load)) + 30)
    load.stop()
    return load, outage, back, recovery


def _lost(lab: SecurityLab) -> int:
    """The gateway components' ``records_lost`` in Redis (each publishes its counters every 5 s)."""
    return int(lab.gateway([sys.executable, "-c", READ_LOST, lab.run.redis_url], timeout=30).stdout.strip() or 0)


def test_a_full_spool_disk_while_redis_is_away_counts_loss_and_recovers(lab: SecurityLab) -> None:
    since = time.time()
    spool = lab.run.state / "spool"
    gateway = _gateway_pid(lab)
    seen_spool = pathlib.Path(f"/proc/{gateway}/root") / str(spool).lstrip("/")  # in the gateway's mount namespace
    mount = ["nsenter", "-t", str(gateway), "-m", "--"]
    subprocess.run([*mount, "mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(spool)], check=True)
    try:
        with lab.capture("records-spool-full") as capture:
            load, outage, back, recovery = _outage_with_a_full_spool(lab, seen_spool)
        lost = eventually(lambda: _lost(lab), timeout=30, interval=1.0)  # the loss reaches the counters
        records = _by_host(lab.records(since))
    finally:
        subprocess.run([*mount, "umount", str(spool)], check=False)
    assert capture.result is not None
    leaked = leaked_bytes(capture.result)
    blocked, unknown = _tally(load)
    twice, totals = _judge(records, lab.run.workers)
    attempts = _attempts(load)
    in_flight = {str(attempts[-1]["host"])} if attempts else set()  # the load was stopped during its next try
    logged = {str(item["host"]) for item in attempts}
    over = sorted(
        host
        for host, total in totals.items()
        if host in logged and host not in in_flight and total > blocked.get(host, 0) + unknown.get(host, 0)
    )
    before = {h for h, _ in _tally(load, before=outage - UPDATE_MARGIN)[0].items()}
    missing_before = sorted(before - set(records))
    missing = [host for host in blocked if host not in records]
    text = (lab.logs / "gateway.log").read_text(errors="replace")
    lost_lines = text.count("records lost")
    tracebacks = text.count("Traceback")
    minutes = (time.time() - outage) / 60
    note = (
        f"tmpfs 256 KiB, Redis stopped {back - outage:.0f} s: {lost} records counted lost, {len(missing)} of "
        f"{len(blocked)} destinations missing, {len(twice)} twice, {len(over)} over-counted; {lost_lines} 'lost' "
        f"log lines, {tracebacks} tracebacks; spool drained {recovery:.1f} s after Redis returned"
    )
    report_fault("records (spool disk full, Redis down)", 1, int(leaked == 0), leaked, "yes", note)
    assert leaked == 0
    assert lost > 0 and len(missing) <= lost, note
    assert not missing_before and not twice and not over, note
    assert tracebacks == 0 and lost_lines <= 3 * (1 + int(minutes)), note


READ_LOST = r"""
import sys, tempfile
from pathlib import Path
from egress.record.store import RecordStore
store = RecordStore(sys.argv[1], Path(tempfile.mkdtemp()), gateway="reader")
print(sum(fields.get("records_lost", 0) for fields in store.read_counters().values()))
"""
