"""The query API under load, for bench/records.py: a real ``egress api serve`` (uvicorn, lab mode, loopback) in a
process of its own, and concurrent keep-alive clients (threads, one httpx client each) that time every request.

`serve` starts the API from a source tree (this one, or another checkout for a side-by-side run: the same Redis,
the same records); `load` runs one request shape from ``clients`` clients until ``requests`` are answered or
``seconds`` have passed, and returns the latencies and the failures (a non-200 reply, a timeout).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis

from tests.ports import free_port

GOAL_P99_MS = 200
_SERVE = "import sys; from egress.api.server import api_serve; sys.exit(api_serve(sys.argv[1:]))"


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process, its live descendants (uvicorn's worker processes) and the children
    they waited for, from /proc: what requests cost the server however busy the machine is (latencies on a shared
    machine measure the machine too); nan once the process is gone (a fault test kills it)."""
    fields = _stat(pid)
    if fields is None:
        return float("nan")
    parents: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (other := _stat(int(entry.name))) is not None:
            parents.setdefault(int(other[1]), []).append(entry.name)
    total, todo = 0, [str(pid)]
    while todo:
        current = todo.pop()
        stat = fields if current == str(pid) else _stat(int(current))
        if stat is not None:
            total += sum(int(value) for value in stat[11:15])
        todo += parents.get(int(current), [])
    return total / os.sysconf("SC_CLK_TCK")


@dataclass
class Served:
    base: str
    pid: int
    redis_pid: int = 0
    """The redis-server's process id, 0 when not measured: its CPU per request is the part of a request's cost
    that the API's own CPU does not show (one thread, shared by every client)."""
    redis_url: str = ""
    """Where `INFO commandstats` is read per shape (calls and server time per command and script)."""


@contextlib.contextmanager
def serve(tree: Path, redis_url: str, workers: int, log: Path, redis_pid: int = 0) -> Iterator[Served]:
    """``egress api serve`` from the source tree ``tree``; yields its base URL and process id, stops it (its own
    process group)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(tree), "EGRESS_API_TOKENS": ""}
    argv = [sys.executable, "-c", _SERVE, "--lab", "--redis-url", redis_url, "--listen", f"127.0.0.1:{port}"]
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [*argv, "--workers", str(workers)], stdout=sink, stderr=sink, env=env, cwd=tree, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the API exited with {process.returncode}: see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/v1/health", timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API did not answer within 60 s: see {log}")
            time.sleep(0.2)
        yield Served(base, process.pid, redis_pid, redis_url)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait(timeout=10)


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    cpu_s: float = 0.0
    """CPU time the API's processes spent (the parent and its workers)."""
    client_cpu_s: float = 0.0
    """CPU time the clients' process spent (the clients are threads of this process)."""
    load_average: float = float("nan")
    """The machine's 1-minute load average when the shape ended."""
    redis_cpu_s: float = float("nan")
    """CPU time the redis-server spent (nan when not measured)."""
    commands: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Per Redis command (a script counts as ``evalsha``, and each command it runs as itself): calls, microseconds
    on the server (INFO commandstats over the shape)."""

    @property
    def answered(self) -> int:
        return len(self.latencies) + sum(self.failures.values())

    @property
    def cpu_ms_per_request(self) -> float:
        return self.cpu_s * 1000 / self.answered if self.answered else float("nan")

    @property
    def redis_cpu_ms_per_request(self) -> float:
        return self.redis_cpu_s * 1000 / self.answered if self.answered else float("nan")

    def per_request(self) -> dict[str, tuple[float, float]]:
        """Per Redis command: calls and server microseconds per request."""
        n = max(1, self.answered)
        return {name: (calls / n, usec / n) for name, (calls, usec) in sorted(self.commands.items())}

    @property
    def client_cpu_ms_per_request(self) -> float:
        return self.client_cpu_s * 1000 / self.answered if self.answered else float("nan")

    def quantile(self, q: int) -> float:
        """The q-th percentile in ms (nan without answers)."""
        if len(self.latencies) < 2:
            return self.latencies[0] * 1000 if self.latencies else float("nan")
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[q - 1] * 1000

    def summary(self) -> dict[str, object]:
        return {
            "answered": len(self.latencies),
            "failed": dict(self.failures),
            "p50_ms": round(self.quantile(50), 1),
            "p99_ms": round(self.quantile(99), 1),
            "seconds": round(self.seconds, 1),
            "server_cpu_ms_per_request": round(self.cpu_ms_per_request, 2),
            "client_cpu_ms_per_request": round(self.client_cpu_ms_per_request, 2),
            "redis_cpu_ms_per_request": round(self.redis_cpu_ms_per_request, 2),
            "redis_commands_per_request": {
                name: {"calls": round(calls, 2), "usec": round(usec, 1)}
                for name, (calls, usec) in self.per_request().items()
            },
            "load_average": round(self.load_average, 1),
        }


def load(
    served: Served,
    path_of: Callable[[int], str],
    clients: int,
    requests: int,
    seconds: float,
    timeout: float,
    stop: threading.Event | None = None,
) -> Result:
    """``clients`` threads, each with its own keep-alive connection, request ``path_of(n)`` (n counts up over all
    clients) until ``requests`` were sent, ``seconds`` passed or ``stop`` is set."""
    result = Result()
    lock = threading.Lock()
    sent = 0
    deadline = time.monotonic() + seconds

    def client() -> None:
        nonlocal sent
        with httpx.Client(base_url=served.base, timeout=timeout) as http:
            while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
                with lock:
                    if sent >= requests:
                        return
                    number = sent
                    sent += 1
                started = time.perf_counter()
                try:
                    status = str(http.get(path_of(number)).status_code)
                except httpx.HTTPError as error:
                    status = type(error).__name__
                elapsed = time.perf_counter() - started
                with lock:
                    if status == "200":
                        result.latencies.append(elapsed)
                    else:
                        result.failures[status] = result.failures.get(status, 0) + 1

    return _run_clients(served, client, clients, result)


def _run_clients(served: Served, client: Callable[[], None], clients: int, result: Result) -> Result:
    """Run ``clients`` threads of ``client`` to the end, then fill ``result``'s time, the server's and the clients'
    CPU seconds and the load average."""
    if served.redis_url:
        _redis_command(served.redis_url, "CONFIG", "RESETSTAT")
    redis_cpu = _own_cpu_seconds(served.redis_pid) if served.redis_pid else float("nan")
    started, cpu, client_cpu = time.monotonic(), cpu_seconds(served.pid), time.process_time()
    threads = [threading.Thread(target=client, name=f"bench-client-{index}") for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.monotonic() - started
    result.cpu_s = cpu_seconds(served.pid) - cpu
    result.client_cpu_s = time.process_time() - client_cpu
    result.load_average = os.getloadavg()[0]
    if served.redis_pid:
        result.redis_cpu_s = _own_cpu_seconds(served.redis_pid) - redis_cpu
    if served.redis_url:
        result.commands = _commandstats(_redis_command(served.redis_url, "INFO", "commandstats"))
    return result


def _own_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of one process (its threads included), nan once it is gone."""
    fields = _stat(pid)
    return float("nan") if fields is None else sum(int(value) for value in fields[11:13]) / os.sysconf("SC_CLK_TCK")


def _redis_command(url: str, *command: str) -> str:
    client = redis.Redis.from_url(url, socket_timeout=30)
    try:
        reply = client.execute_command(*command)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
    finally:
        client.close()
    if isinstance(reply, dict):  # redis-py parses INFO: back to its lines
        return "\n".join(f"{name}:{','.join(f'{k}={v}' for k, v in value.items())}" for name, value in reply.items())
    return str(reply)


def _commandstats(info: str) -> dict[str, tuple[int, int]]:
    """INFO commandstats' lines ``cmdstat_<name>:calls=N,usec=U,...`` as name -> (calls, usec)."""
    out: dict[str, tuple[int, int]] = {}
    for line in info.splitlines():
        name, _, values = line.strip().partition(":")
        if not name.startswith("cmdstat_"):
            continue
        pairs = dict(item.split("=", 1) for item in values.split(",") if "=" in item)
        out[name.removeprefix("cmdstat_")] = (int(float(pairs.get("calls", 0))), int(float(pairs.get("usec", 0))))
    return out


class _Http11:
    """A minimal keep-alive HTTP/1.1 GET client over one socket: a pre-built request out, the status line, the
    headers and a ``Content-Length`` body in. The benchmark's clients use it rather than httpx, whose CPU per
    request (about 5 ms here, 20 threads in one process) was as much as the server's and took the same cores:
    what the benchmark times should be the server."""

    def __init__(self, base: str, timeout: float) -> None:
        host, _, port = base.removeprefix("http://").partition(":")
        self.address = (host, int(port))
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buffer = b""

    def get(self, path: str) -> int:
        """The answer's status; the body is read and dropped. A broken connection raises OSError (and is not
        reused)."""
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=self.timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buffer = b""
        try:
            self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
            while b"\r\n\r\n" not in self.buffer:
                self._read()
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(self.buffer) < length:
                self._read()
            self.buffer = self.buffer[length:]
            return int(lines[0].split()[1])
        except (OSError, ValueError, IndexError):
            self.close()
            raise

    def _read(self) -> None:
        assert self.sock is not None
        chunk = self.sock.recv(1 << 20)
        if not chunk:
            raise ConnectionResetError("the server closed the connection")
        self.buffer += chunk

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def load_lean(served: Served, path_of: Callable[[int], str], clients: int, requests: int, seconds: float) -> Result:
    """`load` with `_Http11` clients (the benchmark's): failures are counted by status or error name."""
    result = Result()
    lock = threading.Lock()
    sent = 0
    deadline = time.monotonic() + seconds

    def client() -> None:
        nonlocal sent
        http = _Http11(served.base, 60.0)
        try:
            while time.monotonic() < deadline:
                with lock:
                    if sent >= requests:
                        return
                    number = sent
                    sent += 1
                started = time.perf_counter()
                try:
                    status = str(http.get(path_of(number)))
                except OSError as error:
                    status = type(error).__name__
                elapsed = time.perf_counter() - started
                with lock:
                    if status == "200":
                        result.latencies.append(elapsed)
                    else:
                        result.failures[status] = result.failures.get(status, 0) + 1
        finally:
            http.close()

    return _run_clients(served, client, clients, result)


def warm(served: Served, shapes: dict[str, Callable[[int], str]], each: int = 20, clients: int = 1) -> None:
    """``each`` requests of every shape from each of ``clients`` concurrent clients: what the API reads once and
    keeps (its read cache) is read, and its thread pools and Redis connections have grown to the load's
    concurrency, before the shapes are timed, whichever comes first (a server in service is warm)."""

    def client() -> None:
        with httpx.Client(base_url=served.base, timeout=120) as http:
            for path_of in shapes.values():
                for number in range(each):
                    http.get(path_of(number)).raise_for_status()

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for done in [pool.submit(client) for _ in range(clients)]:
            done.result()  # a failed request fails the bench


def print_table(api: dict[str, dict[str, Result]], clients: int, workers: int) -> None:
    """Each request shape's p50 / p99 per tree, side by side, the CPU a request cost the server, Redis and the
    clients, the load average, and whether this tree met the goal; then the Redis commands a request sent."""
    print(f"API: {clients} clients, {workers} uvicorn worker(s); per tree: p50 / p99 ms (answered, failed),")
    print("  CPU ms/request of the API, of redis-server and of the clients, 1-min load average at the shape's end")
    print(f"  {'':26}" + "".join(f"{name:>64}" for name in api))
    for shape in next(iter(api.values()), {}):
        cells = []
        for shapes in api.values():
            done = shapes[shape]
            failed = sum(done.failures.values())
            cells.append(
                f"{done.quantile(50):>7.1f} / {done.quantile(99):>7.1f} ({len(done.latencies)}, {failed})"
                f" {done.cpu_ms_per_request:>6.2f} {done.redis_cpu_ms_per_request:>5.2f}"
                f" {done.client_cpu_ms_per_request:>5.2f} {done.load_average:>5.1f}"
            )
        print(f"  {shape:<26}" + "".join(f"{cell:>64}" for cell in cells))
    for name, shapes in api.items():
        print(f"Redis commands per request ({name}): calls, server us")
        for shape, done in shapes.items():
            commands = ", ".join(
                f"{command} {calls:.1f} {usec:.0f}us"
                for command, (calls, usec) in done.per_request().items()
                if calls >= 0.05 and command not in ("config|resetstat", "info", "config")
            )
            print(f"  {shape:<26} {commands}")
    mine = api.get("this tree", {})
    met = bool(mine) and all(result.quantile(99) < GOAL_P99_MS and not result.failures for result in mine.values())
    print(f"  goal p99 < {GOAL_P99_MS} ms each (this tree): {'met' if met else 'NOT met'}")


def print_medians(rounds: list[dict[str, dict[str, Result]]]) -> None:
    """Per tree and shape, the medians over the rounds of the API's and Redis's CPU per request and of p50 and p99:
    the CPU is the figure that carries over a shared machine; the spread of the rounds says how far."""
    print(
        f"medians of {len(rounds)} rounds: CPU ms/request of the API, of redis-server (lowest-highest API); p50 / p99"
    )
    for shape in next(iter(rounds[0].values()), {}):
        cells = []
        for name in rounds[0]:
            done = [api[name][shape] for api in rounds]
            cpu = [result.cpu_ms_per_request for result in done]
            redis_cpu = statistics.median(result.redis_cpu_ms_per_request for result in done)
            p50 = statistics.median(result.quantile(50) for result in done)
            p99 = statistics.median(result.quantile(99) for result in done)
            cells.append(
                f"{name}: {statistics.median(cpu):.2f} {redis_cpu:.2f} ({min(cpu):.2f}-{max(cpu):.2f}); "
                f"{p50:.0f} / {p99:.0f}"
            )
        print(f"  {shape:<26} " + "    ".join(cells))
