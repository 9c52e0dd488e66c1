"""The API killed under load (issue 10): a real ``egress api serve`` with two uvicorn workers, a real redis-server,
clients querying (bench/api_load.py's load generator) and a client reporting actions, while a worker or the API's
parent process is SIGKILLed.

- A worker killed: uvicorn's parent starts a new one; the API keeps answering.
- The parent killed: its workers die with it (none keeps the port, serving unsupervised), and a new
  ``egress api serve`` on the same port (what systemd's ``Restart=on-failure`` does, deploy/systemd) serves.

Either way clients see errors (a refused or reset connection), never a hang (no request reaches its timeout), and
Redis loses nothing: every seeded record reads back unchanged and every action the API accepted is stored.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from bench.api_load import Result, Served, load
from egress.record import query
from egress.record.schema import AttemptRecord
from egress.record.store import RecordStore
from tests.ports import free_port
from tests.record import record
from tests.redis_server import RedisFactory
from tests.waiting import eventually, scaled

pytestmark = pytest.mark.e2e

WORKERS = 2
CLIENTS = 6
SANDBOXES = ("faults-a", "faults-b", "faults-c")
HANGS = ("ReadTimeout", "WriteTimeout", "ConnectTimeout", "PoolTimeout")
"""What a client that waited for its whole timeout reports (bench/api_load.py counts failures by error name)."""
_SERVE = "import sys; from egress.api.server import api_serve; sys.exit(api_serve(sys.argv[1:]))"


@dataclass
class Seeded:
    redis_url: str
    store: RecordStore
    records: list[AttemptRecord]


@pytest.fixture
def seeded(redis_factory: RedisFactory) -> Iterator[Seeded]:
    server = redis_factory.server()
    now = time.time()
    records = [
        record(now - 3600 + n, sandbox=SANDBOXES[n % len(SANDBOXES)], dst=f"198.51.100.{n % 250 + 1}")
        for n in range(1500)
    ]
    with tempfile.TemporaryDirectory(prefix="egt-api-faults-") as spool:
        store = RecordStore(server.url, Path(spool), "gw1", retry_interval=0.0)
        store.write(records)
        yield Seeded(server.url, store, records)
        store.close()
    redis_factory.discard(server)


def _start(redis_url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-c", _SERVE, "--lab", "--redis-url", redis_url, "--listen", f"127.0.0.1:{port}"]
    with log.open("ab") as sink:
        return subprocess.Popen(
            [*argv, "--workers", str(WORKERS)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "EGRESS_API_TOKENS": ""},
            start_new_session=True,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # its own session: the parent and whatever it started
    process.wait(timeout=scaled(10))


def _workers(parent: int) -> list[int]:
    """The uvicorn worker processes of ``parent`` (its children running multiprocessing's spawn)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return sorted(found)


def _started_workers(parent: int) -> list[int]:
    def all_started() -> list[int]:
        found = _workers(parent)
        assert len(found) == WORKERS, found
        return found

    return eventually(all_started, timeout=scaled(30), interval=0.1)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _serving(base: str) -> bool:
    try:
        answered = httpx.get(f"{base}/v1/health", timeout=scaled(10)).status_code == 200
    except httpx.HTTPError as error:
        raise AssertionError(f"not answering: {error}") from error
    assert answered, "health is not 200"
    return True


@dataclass
class Pressure:
    """Queries from `CLIENTS` clients and a stream of reported actions, in threads, until `stop`."""

    base: str
    stop: threading.Event = field(default_factory=threading.Event)
    queries: Result = field(default_factory=Result)
    accepted: list[str] = field(default_factory=list)
    """Ids of the actions the API said it stored."""
    refused: dict[str, int] = field(default_factory=dict)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Pressure:
        paths = itertools.cycle(
            [
                "/v1/attempts?limit=100",
                f"/v1/sandboxes/{SANDBOXES[0]}/timeline?limit=200",
                "/v1/stats?window=7200",
                f"/v1/attempts?sandbox={SANDBOXES[1]}&limit=50",
            ]
        )

        def queries() -> None:
            served = Served(self.base, os.getpid())  # the server's CPU is not measured here
            self.queries = load(served, lambda n: next(paths), CLIENTS, 10**9, 3600, scaled(60), stop=self.stop)

        self.threads = [threading.Thread(target=queries), threading.Thread(target=self._report)]
        for thread in self.threads:
            thread.start()
        return self

    def _report(self) -> None:
        with httpx.Client(base_url=self.base, timeout=scaled(60)) as http:
            for n in itertools.count():
                if self.stop.is_set():
                    return
                now = time.time()
                action = {"sandbox": SANDBOXES[2], "id": f"act-{n}", "kind": "shell_command", "command": f"step {n}",
                          "start": now - 1, "end": now}  # fmt: skip
                try:
                    answer = http.post("/v1/actions", json={"actions": [action]})
                    outcome = "stored" if answer.status_code == 200 and answer.json() == {"accepted": 1} else ""
                    outcome = outcome or str(answer.status_code)
                except httpx.HTTPError as error:
                    outcome = type(error).__name__
                if outcome == "stored":
                    self.accepted.append(f"act-{n}")
                else:
                    self.refused[outcome] = self.refused.get(outcome, 0) + 1
                time.sleep(0.02)

    def answered(self) -> int:
        return len(self.queries.latencies) + len(self.accepted)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=scaled(120))
        assert not any(thread.is_alive() for thread in self.threads), "a client hangs"


def _more(pressure: Pressure, count: int = 20) -> None:
    """Wait until the clients got ``count`` more answers than now (the API serves under the load)."""
    start = pressure.answered()

    def enough() -> bool:
        assert pressure.answered() >= start + count, f"{pressure.answered() - start} answers so far"
        return True

    eventually(enough, timeout=scaled(60), interval=0.1)


def _judge(seeded: Seeded, pressure: Pressure) -> None:
    """Errors, not hangs; every seeded record unchanged; every accepted action stored."""
    failures = {**pressure.queries.failures, **pressure.refused}
    hangs = {name: count for name, count in failures.items() if name in HANGS}
    assert not hangs, f"requests that hung until their timeout: {hangs} (all failures: {failures})"
    stored = []
    for sandbox in SANDBOXES:
        found, _ = seeded.store.read(sandbox, count=10_000)
        stored += found
    assert sorted(stored, key=lambda r: r.id) == sorted(seeded.records, key=lambda r: r.id)
    actions = {action.id for action in query.read_actions(seeded.store, SANDBOXES[2], None, None, limit=100_000)}
    lost = [action for action in pressure.accepted if action not in actions]
    assert pressure.accepted and not lost, f"{len(lost)} of {len(pressure.accepted)} accepted actions not stored"


def test_a_worker_killed_under_load_is_replaced(seeded: Seeded, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = _start(seeded.redis_url, port, tmp_path / "api.log")
    try:
        eventually(lambda: _serving(base), timeout=scaled(60), interval=0.2)
        workers = _started_workers(process.pid)
        pressure = Pressure(base).start()
        try:
            _more(pressure)
            os.kill(workers[0], signal.SIGKILL)

            def replaced() -> bool:
                now = _workers(process.pid)
                assert workers[0] not in now and len(now) == WORKERS, now
                return True

            eventually(replaced, timeout=scaled(60), interval=0.2)
            _more(pressure)
        finally:
            pressure.finish()
        assert process.poll() is None, (tmp_path / "api.log").read_text(errors="replace")[-2000:]
        _judge(seeded, pressure)
    finally:
        _stop(process)


def test_the_parent_killed_under_load_takes_its_workers_and_a_restart_serves(seeded: Seeded, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "api.log"
    process = _start(seeded.redis_url, port, log)
    restarted: subprocess.Popen[bytes] | None = None
    try:
        eventually(lambda: _serving(base), timeout=scaled(60), interval=0.2)
        workers = _started_workers(process.pid)
        pressure = Pressure(base).start()
        try:
            _more(pressure)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=scaled(10))

            def orphans_gone() -> bool:
                left = [pid for pid in workers if _alive(pid)]
                assert not left, f"workers outlive their parent and keep the port: {left}"
                return True

            eventually(orphans_gone, timeout=scaled(30), interval=0.2)
            restarted = _start(seeded.redis_url, port, log)  # systemd's Restart=on-failure, on the same port
            eventually(lambda: _serving(base), timeout=scaled(60), interval=0.2)
            _more(pressure)
        finally:
            pressure.finish()
        assert restarted.poll() is None, log.read_text(errors="replace")[-2000:]
        _judge(seeded, pressure)
    finally:
        for started in (process, restarted):  # each in its own session: a worker that outlived its parent too
            if started is not None:
                _stop(started)
