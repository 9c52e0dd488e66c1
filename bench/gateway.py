"""Gateway benchmark: the egress gateway beside direct forwarding and Squid, in one lab, in one run (issue 3).

Brings up a lab (``egt-bench-`` by default), starts the fake internet with one server process per core, then for
each configuration, in the same lab:

- ``direct``: no proxy, the gateway namespace only forwards (the limit);
- ``squid``: Debian's squid-openssl, transparent SNI peek-and-splice, ``workers`` = cores (bench/squid.py);
- ``egress``: the real gateway (`egress.lab.demo.GatewayRun`, rules/lab-policy.yaml, workers = cores);
- ``egress-quiet``: the same at log level ``warning`` (allowed decisions counted, not logged: Squid runs without
  an access log);

runs the load generator (this file's ``loadgen`` subcommand) inside the sandbox namespace: bulk HTTPS download
MB/s over 1 and 4 connections, new TLS connections/s (connect + full handshake with SNI allowed.lab + small GET +
close), keep-alive HTTP requests/s on port 80 (wrk if installed, else Python), and for egress the Stratum
time-to-block (first byte sent → connection closed). allowed.lab is resolved once per measurement through the
configuration's resolver (the gateway's for egress: its proxy only passes an SNI whose address it answered).
Prints a config × metric table, the ratios, the goals, and the CPU seconds that client, gateway namespace and
servers spent on each measurement. The lab is taken down at the end, whatever happens.

    python bench/gateway.py                  # everything: 3 interleaved rounds, about 2.5 minutes
    python bench/gateway.py --only egress --seconds 5 --json /tmp/gw.json
    python bench/gateway.py --only squid,egress --measure http,conns --rounds 2   # issue 15's rows
    python bench/gateway.py --only squid,egress --measure conns --split   # each process's user and kernel CPU

The table has the CPU each configuration's namespace spent per unit of work (per MiB, per connection, per
request) beside the throughput: on a shared machine the CPU per unit is the stable figure. It is also shown net
of what the namespace spends without load (``--idle`` seconds measured before each configuration's measurements:
egress's timers read drop counters and refresh its guard table; Squid idles at nearly nothing), which a loaded
machine, doing few units per second, would otherwise spread over each unit.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pathlib
import platform
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from egress.lab import netns, sandbox_io, servers  # noqa: E402
from egress.lab.topology import GATEWAY_SBX_V4, Lab, server  # noqa: E402
from tests.sockio import recv_at_least, recv_until  # noqa: E402

HOST = "allowed.lab"
TIMEOUT = 5.0
"""Seconds for every socket operation of the load generator."""
WARMUP = 0.5
"""Seconds of load before counting starts (connections open, workers warm)."""
SUBSCRIBE = b'{"id":1,"method":"mining.subscribe","params":[]}\n'
BULK_MB = 32
"""MiB per request in the bulk test (several requests per connection, keep-alive)."""
Result = dict[str, Any]


# ── load generator: runs inside the sandbox namespace ─────────────────────────────────────────────────────────


def resolve(nameserver: str) -> str:
    """allowed.lab's address, asked of ``nameserver`` (for egress the gateway's resolver, which binds the two)."""
    return sandbox_io.resolve(sandbox_io.Context(nameservers=(nameserver,), timeout=TIMEOUT), HOST)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def _measure(workers: list[threading.Thread], counter: Callable[[], int], seconds: float) -> tuple[int, float]:
    """Start ``workers``, let them warm up, then return how much ``counter`` grew in ``seconds``, and the time."""
    for worker in workers:
        worker.start()
    time.sleep(WARMUP)
    before, start = counter(), time.perf_counter()
    time.sleep(seconds)
    return counter() - before, time.perf_counter() - start


class _BioStream:
    """A TLS client connection driven through memory BIOs: the reader takes 1 MiB socket reads (few syscalls)."""

    def __init__(self, address: str, context: ssl.SSLContext) -> None:
        self.sock = socket.create_connection((address, 443), TIMEOUT)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname=HOST)
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()

    def _flush(self) -> None:
        if self.outgoing.pending:
            self.sock.sendall(self.outgoing.read())

    def _fill(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("connection closed by the other side")
        self.incoming.write(data)

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()

    def records(self, buffer: bytearray) -> Iterator[int]:
        """Decrypt what one socket read brings: yields each record's length, its plaintext at the start of
        ``buffer`` (overwritten by the next one)."""
        self._fill()
        while True:
            try:
                got = self.tls.read(len(buffer), buffer)
            except ssl.SSLWantReadError:
                return
            if not isinstance(got, int) or not got:  # with a buffer, read() returns a count
                raise ConnectionError("TLS session closed")
            yield got


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise ConnectionError(f"no Content-Length in {head[:80]!r}")


def bulk(address: str, cafile: str, streams: int, seconds: float) -> Result:
    """MiB/s summed over ``streams`` concurrent HTTPS downloads of /big from allowed.lab.

    Each connection asks for `BULK_MB` MiB at a time (keep-alive) and, once time is up, reads the response it is
    in to its end before closing: a connection dropped mid-body would leave the lab server busy writing."""
    context = ssl.create_default_context(cafile=cafile)
    received = [0] * streams
    errors: list[str] = []
    stop = threading.Event()
    request = f"GET /big?mb={BULK_MB} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()

    def download(index: int) -> None:
        buffer = bytearray(1 << 16)
        try:
            stream = _BioStream(address, context)
            with stream.sock:
                stream.send(request)
                remaining: int | None = None
                while True:
                    for got in stream.records(buffer):
                        if remaining is None:
                            end = buffer.find(b"\r\n\r\n", 0, got)
                            if end < 0 or not buffer.startswith(b"HTTP/1.1 200"):
                                raise ConnectionError(f"unexpected answer {bytes(buffer[:60])!r}")
                            remaining = _content_length(bytes(buffer[:end])) - (got - end - 4)
                        else:
                            remaining -= got
                        received[index] += got
                    if remaining == 0:
                        if stop.is_set():
                            return
                        stream.send(request)
                        remaining = None
        except (OSError, ssl.SSLError) as error:
            errors.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=download, args=(i,), daemon=True) for i in range(streams)]
    count, elapsed = _measure(threads, lambda: sum(received), seconds)
    stop.set()
    for thread in threads:
        thread.join(TIMEOUT * 4)
    return {
        "mb_s": count / elapsed / (1 << 20),
        "total": sum(received) / (1 << 20),
        "errors": len(errors),
        "error": errors[0] if errors else "",
    }


def _read_response(sock: socket.socket | ssl.SSLSocket, pending: bytes = b"") -> bytes:
    """Read one HTTP response with a Content-Length body; return what was read past it."""
    data = recv_until(sock, b"\r\n\r\n", pending, closed="closed before the response head")
    head, _, rest = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"answer {head.split(b'\r\n', 1)[0][:60]!r}")
    length = _content_length(head)
    return recv_at_least(sock, length, rest, closed="closed inside the response body")[length:]


def connections(address: str, cafile: str, concurrency: int, seconds: float) -> Result:
    """New TLS connections/s: ``concurrency`` clients each looping connect, handshake, GET /, close."""
    context = ssl.create_default_context(cafile=cafile)
    done = [0] * concurrency
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[str] = []
    stop = threading.Event()
    request = f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode()

    def loop(index: int) -> None:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                with (
                    socket.create_connection((address, 443), TIMEOUT) as sock,
                    context.wrap_socket(sock, server_hostname=HOST) as tls,
                ):
                    tls.sendall(request)
                    _read_response(tls)
            except (OSError, ssl.SSLError) as error:
                errors.append(f"{type(error).__name__}: {error}")
                time.sleep(0.01)
                continue
            latencies[index].append(time.perf_counter() - start)
            done[index] += 1

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(concurrency)]
    count, elapsed = _measure(threads, lambda: sum(done), seconds)
    stop.set()
    for thread in threads:
        thread.join(TIMEOUT)
    every = [x for each in latencies for x in each]
    return {
        "conn_s": count / elapsed,
        "total": sum(done),
        "p50_ms": _percentile(every, 0.5) * 1000,
        "p99_ms": _percentile(every, 0.99) * 1000,
        "errors": len(errors),
        "error": errors[0] if errors else "",
    }


def _wrk(address: str, concurrency: int, seconds: float) -> Result:
    wrk = shutil.which("wrk")
    assert wrk is not None
    argv = [wrk, "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "-H", f"Host: {HOST}", f"http://{address}/"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=False)
    result: Result = {"tool": "wrk", "req_s": float("nan"), "errors": 0, "error": ""}
    for line in done.stdout.splitlines():
        words = line.split()
        if line.startswith("Requests/sec:"):
            result["req_s"] = float(words[1])
        elif len(words) > 2 and words[1:3] == ["requests", "in"]:
            result["total"] = int(words[0])
        elif "Non-2xx" in line or line.strip().startswith("Socket errors"):
            result["errors"] += sum(int(w.strip(",")) for w in words if w.strip(",").isdigit())
            result["error"] = line.strip()
    if done.returncode != 0:
        result["error"] = (done.stderr or done.stdout).strip()[-200:]
    return result


def http_keepalive(address: str, concurrency: int, seconds: float) -> Result:
    """Requests/s over ``concurrency`` persistent HTTP/1.1 connections to allowed.lab:80."""
    if shutil.which("wrk"):
        return _wrk(address, concurrency, seconds)
    done = [0] * concurrency
    errors: list[str] = []
    stop = threading.Event()
    request = f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()

    def loop(index: int) -> None:
        try:
            with socket.create_connection((address, 80), TIMEOUT) as sock:
                pending = b""
                while not stop.is_set():
                    sock.sendall(request)
                    pending = _read_response(sock, pending)
                    done[index] += 1
        except OSError as error:
            if not stop.is_set():
                errors.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(concurrency)]
    count, elapsed = _measure(threads, lambda: sum(done), seconds)
    stop.set()
    for thread in threads:
        thread.join(TIMEOUT)
    return {
        "tool": "python",
        "req_s": count / elapsed,
        "total": sum(done),
        "errors": len(errors),
        "error": errors[0] if errors else "",
    }


STRATUM_WARMUP = 6
"""Attempts made before time-to-block is counted (kept apart as ``warmup_ms``): each round starts a fresh gateway,
whose first blocks in each worker take 2-10 times as long (first use of the paths, the recorder's first write);
of 300 attempts they were 2-3 of the 4 slowest, the p99 (docs/gateway-performance.md, "Time-to-block's tail")."""


def stratum(count: int, warmup: int = STRATUM_WARMUP) -> Result:
    """Time from sending a Stratum subscribe to 198.18.10.3:3333 until the connection closes, ``count`` times,
    after ``warmup`` attempts timed apart."""
    pool = server("pool").v4
    times: list[float] = []
    outcomes: dict[str, int] = {}
    warm: list[float] = []
    for attempt in range(warmup + count):
        if attempt == warmup:
            warm, times, outcomes = times, [], {}
        try:
            sock = socket.create_connection((pool, 3333), TIMEOUT)
        except OSError as error:
            outcomes[f"connect {type(error).__name__}"] = outcomes.get(f"connect {type(error).__name__}", 0) + 1
            continue
        with sock:
            start = time.perf_counter()
            sock.sendall(SUBSCRIBE)
            try:
                outcome = "answered" if sock.recv(4096) else "closed"
            except ConnectionResetError:
                outcome = "reset"
            except TimeoutError:
                outcome = "timeout"
            elapsed = time.perf_counter() - start
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if outcome in ("closed", "reset"):
            times.append(elapsed)
    return {
        "p50_ms": _percentile(times, 0.5) * 1000,
        "p99_ms": _percentile(times, 0.99) * 1000,
        "max_ms": max(times, default=float("nan")) * 1000,
        "blocked": len(times),
        "total": len(times) + len(warm),  # the gateway's CPU per block is over every block, warm-up's too
        "outcomes": outcomes,
        "times_ms": [round(t * 1000, 3) for t in times],
        "warmup_ms": [round(t * 1000, 3) for t in warm],
    }


TTB_PERCENTILES = (0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98, 0.99)
TTB_BUCKET_MS = 0.5


def ttb_detail(times_ms: list[float]) -> list[str]:
    """``--ttb-detail``: the time-to-block's percentiles and a histogram of 0.5 ms buckets, as lines."""
    if not times_ms:
        return ["no blocked attempt"]
    ordered = sorted(times_ms)
    shown = "  ".join(f"p{100 * f:g} {_percentile(ordered, f):.2f}" for f in TTB_PERCENTILES)
    lines = [f"{shown}  max {ordered[-1]:.2f} ms"]
    counts: dict[int, int] = {}
    for value in ordered:
        bucket = int(value // TTB_BUCKET_MS)
        counts[bucket] = counts.get(bucket, 0) + 1
    widest = max(counts.values())
    for bucket in range(min(counts), max(counts) + 1):
        count = counts.get(bucket, 0)
        low = bucket * TTB_BUCKET_MS
        lines.append(f"{low:6.1f}-{low + TTB_BUCKET_MS:<5.1f} ms {count:4d} {'#' * math.ceil(50 * count / widest)}")
    lines.append("slowest: " + " ".join(f"{value:.2f}" for value in ordered[-8:]))
    return lines


def loadgen(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gateway.py loadgen")
    parser.add_argument("test", choices=("bulk", "conns", "http", "stratum"))
    parser.add_argument("--nameserver", required=True)
    parser.add_argument("--cafile", default="")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--count", type=int, default=300)
    args = parser.parse_args(argv)
    result: Result
    if args.test == "stratum":
        result = stratum(args.count)
    else:
        address = resolve(args.nameserver)
        if args.test == "bulk":
            result = bulk(address, args.cafile, args.parallel, args.seconds)
        elif args.test == "conns":
            result = connections(address, args.cafile, args.parallel, args.seconds)
        else:
            result = http_keepalive(address, args.parallel, args.seconds)
        result["address"] = address
    print(json.dumps(result))
    return 0


# ── orchestration: runs in the host namespace, as root ─────────────────────────────────────────────────────────


class Unavailable(RuntimeError):
    """A configuration that cannot run on this machine; the message says why."""


def _tune(lab: Lab) -> None:
    """Room for many short connections in the lab (its own namespaces only): wide port range, reuse TIME_WAIT."""
    for ns in (lab.sandbox_ns, lab.gateway_ns):
        script = (
            "echo 1 > /proc/sys/net/ipv4/tcp_tw_reuse && echo '15000 64000' > /proc/sys/net/ipv4/ip_local_port_range"
        )
        netns.exec_in(ns, ["sh", "-c", script], timeout=10)


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs since boot, from /proc/stat."""
    fields = [int(x) for x in pathlib.Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields[:8]) - idle, sum(fields[:8])


def _ns_cpu(ns: str) -> float:
    """CPU seconds used so far by the processes now running inside ``ns`` (threads included), and by the children
    they waited for (cutime, cstime: the ``nft`` processes the gateway's supervisor ran, which a sum of the live
    processes' own times missed)."""
    done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10, check=False)
    total = 0
    for pid in done.stdout.split():
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
    return total / os.sysconf("SC_CLK_TCK")


def _ns_split(ns: str) -> dict[str, tuple[float, float]]:
    """Per process now running inside ``ns``: its CPU seconds so far in user space and in the kernel (utime and
    stime, its threads and the children it waited for included), keyed by pid and a short name from its command
    line (``--split``: which processes spend a connection's CPU, and where). Kernel work done in softirq context is
    charged to whichever process the CPU was running, as in `_ns_cpu`."""
    done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10, check=False)
    ticks = os.sysconf("SC_CLK_TCK")
    split: dict[str, tuple[float, float]] = {}
    for pid in done.stdout.split():
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            user, system = int(fields[11]) + int(fields[13]), int(fields[12]) + int(fields[14])
            words = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
            split[f"{pid} {_short_name(words)}"] = (user / ticks, system / ticks)
    return split


def _short_name(words: list[str]) -> str:
    """A process's role from its command line: the program, or for Python the module and subcommand words."""
    words = [w for w in words if w]
    if not words:
        return "?"
    program = pathlib.Path(words[0]).name
    if not program.startswith("python"):
        return program
    rest = [w for w in words[1:] if not w.startswith("-") and "/" not in w and "=" not in w and not w.isdigit()]
    return " ".join(rest[:3]) or program


def idle_rate(lab: Lab, seconds: float) -> float:
    """CPU seconds per second the gateway namespace spends with no load (its timers: the drop counters read, the
    guard table refreshed, the recorder's tick): on a loaded machine few units of work share it, so the CPU per
    unit is also shown net of it."""
    before, start = _ns_cpu(lab.gateway_ns), time.monotonic()
    time.sleep(seconds)
    return max(0.0, (_ns_cpu(lab.gateway_ns) - before) / (time.monotonic() - start))


def run_loadgen(
    lab: Lab,
    test: str,
    nameserver: str,
    seconds: float,
    parallel: int = 1,
    count: int = 0,
    idle: float = 0.0,
    split: bool = False,
) -> Result:
    """One load generator run in the sandbox namespace, with the CPU each side spent during it; ``idle``: the
    gateway namespace's CPU per second without load (`idle_rate`), taken off its CPU per unit for ``gw_net_ms``;
    ``split``: also each gateway process's user and kernel CPU ms per unit (``split``, from `_ns_split`)."""
    argv = [sys.executable, str(pathlib.Path(__file__).resolve()), "loadgen", test, "--nameserver", nameserver]
    argv += ["--cafile", str(lab.ca_file), "--seconds", str(seconds), "--parallel", str(parallel)]
    argv += ["--count", str(count)]
    split0 = _ns_split(lab.gateway_ns) if split else {}
    gateway0, servers0, (busy0, total0) = _ns_cpu(lab.gateway_ns), _ns_cpu(lab.internet_ns), _machine_ticks()
    usage0, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    try:
        done = netns.exec_in(lab.sandbox_ns, argv, timeout=seconds + 60 + count * 0.1)
    except subprocess.TimeoutExpired:
        return {"failed": "load generator timed out"}
    usage1, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic() - started
    busy1, total1 = _machine_ticks()
    gateway1, servers1 = _ns_cpu(lab.gateway_ns), _ns_cpu(lab.internet_ns)
    split1 = _ns_split(lab.gateway_ns) if split else {}
    if done.returncode != 0:
        return {"failed": (done.stderr.strip() or f"exit {done.returncode}").splitlines()[-1][:200]}
    result: Result = json.loads(done.stdout.strip().splitlines()[-1])
    gateway_cpu = gateway1 - gateway0
    total = result.get("total")
    if isinstance(total, int | float) and total > 0:
        # gateway CPU per unit: ms per MiB (bulk), per connection, per request or per blocked attempt
        result["gw_cpu_ms"] = 1000.0 * gateway_cpu / total
        result["gw_net_ms"] = 1000.0 * max(0.0, gateway_cpu - idle * wall) / total
        if split:
            result["split"] = {
                name: [
                    round(1000.0 * (user - split0.get(name, (0.0, 0.0))[0]) / total, 4),
                    round(1000.0 * (system - split0.get(name, (0.0, 0.0))[1]) / total, 4),
                ]
                for name, (user, system) in split1.items()
            }
    result["cpu"] = {
        "client": (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime),
        "gateway": gateway1 - gateway0,
        "servers": servers1 - servers0,
        "busy_pct": 100.0 * (busy1 - busy0) / max(total1 - total0, 1),
    }
    return result


@contextlib.contextmanager
def direct(lab: Lab, workers: int) -> Iterator[str]:
    """Nothing in the way: the gateway namespace forwards; names come from the lab's authority."""
    del lab, workers
    yield server("ns").v4


@contextlib.contextmanager
def squid_proxy(lab: Lab, workers: int) -> Iterator[str]:
    from bench import squid

    reason = squid.unusable()
    if reason is not None:
        raise Unavailable(reason)
    run = squid.SquidRun(lab, workers)
    try:
        run.start()
        yield server("ns").v4
    finally:
        run.stop()


@contextlib.contextmanager
def egress_gateway(
    lab: Lab, workers: int, policy: pathlib.Path | None = None, extra_args: tuple[str, ...] = ()
) -> Iterator[str]:
    """The real gateway (`GatewayRun`), its Redis beside it; the lockdown and guard tables it leaves are removed
    after (the guard drops every sandbox packet once the supervisor is gone: a peer measured after it got none).
    ``policy``: another than the lab's; ``extra_args``: more ``gateway run`` options."""
    from egress.lab import demo
    from egress.nft import runner

    run = demo.GatewayRun(lab, policy or demo.LAB_POLICY, workers, ready_timeout=120.0, extra_args=extra_args)
    (lab.state_dir / "logs").mkdir(parents=True, exist_ok=True)
    run.state.mkdir(parents=True, exist_ok=True)
    redis = netns.popen_in(
        lab.gateway_ns,
        [
            *(shutil.which("redis-server") or "redis-server", "--port", str(demo.REDIS_PORT), "--bind", "127.0.0.1"),
            *("--save", "", "--appendonly", "no", "--dir", str(run.state)),
        ],
        stdout=(lab.state_dir / "logs" / "redis.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    run.processes = [redis]
    try:
        deadline = time.monotonic() + 20
        while not _listening(lab.gateway_ns, demo.REDIS_PORT):
            if time.monotonic() > deadline or redis.poll() is not None:
                raise Unavailable("redis-server did not start")
            time.sleep(0.1)
        run.start_gateway()
        yield GATEWAY_SBX_V4
    finally:
        run.stop()
        for table in ("egress", "egress_guard"):  # the lockdown, and the guard that drops all once the gateway stops
            with contextlib.suppress(runner.NftError):
                runner.delete_table(table, netns=lab.gateway_ns)


@contextlib.contextmanager
def quiet_egress(lab: Lab, workers: int) -> Iterator[str]:
    """The real gateway logging at ``warning`` (`EGRESS_LOG_LEVEL`): blocks, would-blocks and records are still
    logged and recorded, allowed decisions only counted; Squid's yardstick runs without an access log likewise."""
    before = os.environ.get("EGRESS_LOG_LEVEL")
    os.environ["EGRESS_LOG_LEVEL"] = "warning"
    try:
        with egress_gateway(lab, workers) as nameserver:
            yield nameserver
    finally:
        if before is None:
            os.environ.pop("EGRESS_LOG_LEVEL", None)
        else:
            os.environ["EGRESS_LOG_LEVEL"] = before


def _listening(ns: str, port: int) -> bool:
    return bool(netns.exec_in(ns, ["ss", "-Htln", f"sport = :{port}"], timeout=5).stdout.strip())


CONFIGS: dict[str, Callable[[Lab, int], contextlib.AbstractContextManager[str]]] = {
    "direct": direct,
    "squid": squid_proxy,
    "egress": egress_gateway,
    "egress-quiet": quiet_egress,
}


SPLIT_KEYS: tuple[str, ...] = ("cpu", "split", "times_ms", "warmup_ms")
"""A result's fields printed on lines of their own."""


def measure(lab: Lab, name: str, nameserver: str, args: argparse.Namespace) -> dict[str, Result]:
    plan: list[tuple[str, str, int, int]] = [
        ("bulk1", "bulk", 1, 0),
        ("bulk4", "bulk", 4, 0),
        ("conns", "conns", args.concurrency, 0),
        ("http", "http", args.concurrency, 0),
    ]
    if name.startswith("egress"):
        plan.append(("ttb", "stratum", 1, args.stratum))
    if args.measure:
        wanted = {key.strip() for key in args.measure.split(",")}
        plan = [step for step in plan if step[0] in wanted]
    results: dict[str, Result] = {}
    idle = idle_rate(lab, args.idle) if args.idle > 0 else 0.0
    print(f"  {name:<7} idle   gateway namespace {100 * idle:.1f}% of a CPU without load", flush=True)
    for key, test, parallel, count in plan:
        result = run_loadgen(lab, test, nameserver, args.seconds, parallel, count, idle, args.split)
        results[key] = result
        shown = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in result.items() if k not in SPLIT_KEYS}
        cpu = result.get("cpu", {})
        cpu_text = " ".join(f"{k}={v:.1f}" for k, v in cpu.items())
        print(f"  {name:<7} {key:<6} {json.dumps(shown)}  cpu[{cpu_text}]", flush=True)
        if args.ttb_detail and "times_ms" in result:
            for line in ttb_detail(result["times_ms"]):
                print(f"  {name:<7} {key:<6} {line}", flush=True)
            warm = " ".join(f"{value:.2f}" for value in result.get("warmup_ms", []))
            print(f"  {name:<7} {key:<6} warm-up attempts (not counted): {warm} ms", flush=True)
        split = result.get("split", {})
        if split:
            users, systems = sum(u for u, _ in split.values()), sum(s for _, s in split.values())
            print(f"  {name:<7} {key:<6} split, CPU ms per unit user+kernel: all {users:.3f}+{systems:.3f}", flush=True)
            for process, (user, system) in sorted(split.items(), key=lambda item: -sum(item[1])):
                if user + system > 0:
                    print(f"  {name:<7} {key:<6}   {user:.3f}+{system:.3f}  {process}", flush=True)
    return results


METRICS: tuple[tuple[str, str, str, str], ...] = (
    ("bulk1", "mb_s", "TLS bulk, 1 conn (MiB/s)", "higher"),
    ("bulk4", "mb_s", "TLS bulk, 4 conns (MiB/s)", "higher"),
    ("conns", "conn_s", "new TLS conns/s", "higher"),
    ("conns", "p50_ms", "  conn latency p50 (ms)", "lower"),
    ("http", "req_s", "HTTP keep-alive req/s", "higher"),
    ("bulk4", "gw_cpu_ms", "gateway CPU ms per MiB", "lower"),
    ("bulk4", "gw_net_ms", "  net of idle", "lower"),
    ("conns", "gw_cpu_ms", "gateway CPU ms per TLS conn", "lower"),
    ("conns", "gw_net_ms", "  net of idle", "lower"),
    ("http", "gw_cpu_ms", "gateway CPU ms per HTTP req", "lower"),
    ("http", "gw_net_ms", "  net of idle", "lower"),
    ("ttb", "gw_cpu_ms", "gateway CPU ms per block", "lower"),
    ("ttb", "p50_ms", "time-to-block p50 (ms)", "lower"),
    ("ttb", "p99_ms", "time-to-block p99 (ms)", "lower"),
)


def _value(results: dict[str, dict[str, Result]], config: str, key: str, field: str) -> float | None:
    value = results.get(config, {}).get(key, {}).get(field)
    return float(value) if isinstance(value, int | float) else None


def _fmt(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.0f}" if value >= 100 else (f"{value:.2f}" if value >= 0.1 else f"{value:.3f}")


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None or not b or math.isnan(a) or math.isnan(b) else f"{a / b:.2f}"


def _medians(rounds: list[dict[str, Result]]) -> dict[str, Result]:
    """Per measurement, the median of each number over the rounds that produced it (the first of anything else)."""
    merged: dict[str, Result] = {}
    for key in dict.fromkeys(k for each in rounds for k in each):
        runs = [each[key] for each in rounds if key in each]
        fields = dict.fromkeys(f for run in runs for f in run)
        merged[key] = {}
        for field in fields:
            values = [run[field] for run in runs if field in run]
            if field == "cpu":
                merged[key][field] = _medians([{"cpu": v} for v in values])["cpu"]
            elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
                merged[key][field] = statistics.median(values)
            else:
                merged[key][field] = values[0]
    return merged


def report(results: dict[str, dict[str, Result]], skipped: dict[str, str]) -> list[str]:
    """The table, the ratios and the goals, as lines."""
    configs = [c for c in CONFIGS if c in results]
    lines = [f"{'metric':<28}" + "".join(f"{c:>13}" for c in configs) + f"{'eg/direct':>11}{'eg/squid':>10}"]
    for key, field, label, _ in METRICS:
        values = [_value(results, c, key, field) for c in configs]
        if all(v is None for v in values):
            continue
        egress = _value(results, "egress", key, field)
        row = f"{label:<28}" + "".join(f"{_fmt(v):>13}" for v in values)
        row += f"{_ratio(egress, _value(results, 'direct', key, field)):>11}"
        lines.append(row + f"{_ratio(egress, _value(results, 'squid', key, field)):>10}")
    lines.append("")
    lines.append(f"{'CPU s during each (client/gateway ns/servers, machine busy %)':<64}")
    for config in configs:
        cells = []
        for key, result in results[config].items():
            cpu = result.get("cpu")
            if cpu:
                cells.append(
                    f"{key} {cpu['client']:.1f}/{cpu['gateway']:.1f}/{cpu['servers']:.1f} {cpu['busy_pct']:.0f}%"
                )
            else:
                cells.append(f"{key} failed: {result.get('failed', '?')}")
        lines.append(f"  {config:<7} " + "; ".join(cells))
    lines.append("")
    lines += _goals(results)
    for config, why in skipped.items():
        lines.append(f"{config}: not run: {why}")
    return lines


def _goals(results: dict[str, dict[str, Result]]) -> list[str]:
    def verdict(ok: bool | None) -> str:
        return "n/a " if ok is None else ("PASS" if ok else "FAIL")

    lines = ["goals:"]
    for key, share in (("bulk1", 0.8), ("bulk4", 0.5)):  # issue 15: one connection at 0.8 of direct
        egress, base = _value(results, "egress", key, "mb_s"), _value(results, "direct", key, "mb_s")
        ok = None if egress is None or base is None else egress >= share * base
        lines.append(f"  {verdict(ok)} {key}: allowed TLS bulk >= {share} of direct ({_ratio(egress, base)} of direct)")
    egress, squid_value = _value(results, "egress", "conns", "conn_s"), _value(results, "squid", "conns", "conn_s")
    ok = None if egress is None or squid_value is None else egress >= squid_value
    lines.append(f"  {verdict(ok)} new TLS conns/s >= squid's ({_ratio(egress, squid_value)} of squid)")
    for config in ("egress", "egress-quiet"):
        cpu, squid_cpu = _value(results, config, "http", "gw_cpu_ms"), _value(results, "squid", "http", "gw_cpu_ms")
        ok = None if cpu is None or squid_cpu is None else cpu <= 2 * squid_cpu
        lines.append(f"  {verdict(ok)} {config}: CPU per HTTP request <= 2x squid's ({_ratio(cpu, squid_cpu)}x)")
        rate, squid_rate = _value(results, config, "http", "req_s"), _value(results, "squid", "http", "req_s")
        ok = None if rate is None or squid_rate is None else rate >= 0.5 * squid_rate
        lines.append(f"  {verdict(ok)} {config}: HTTP keep-alive req/s >= 1/2 squid's ({_ratio(rate, squid_rate)})")
        cpu, squid_cpu = _value(results, config, "conns", "gw_cpu_ms"), _value(results, "squid", "conns", "gw_cpu_ms")
        ok = None if cpu is None or squid_cpu is None else cpu <= squid_cpu
        net, squid_net = _value(results, config, "conns", "gw_net_ms"), _value(results, "squid", "conns", "gw_net_ms")
        lines.append(
            f"  {verdict(ok)} {config}: CPU per new TLS connection <= squid's ({_ratio(cpu, squid_cpu)}x; "
            f"net of idle {_ratio(net, squid_net)}x)"
        )
    p99 = _value(results, "egress", "ttb", "p99_ms")
    ok = None if p99 is None or math.isnan(p99) else p99 < 5.0
    lines.append(f"  {verdict(ok)} time-to-block p99 < 5 ms ({_fmt(p99)} ms)")
    return lines


def machine() -> dict[str, str]:
    from bench import squid

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    try:
        import mitmproxy.version

        mitm = mitmproxy.version.VERSION
    except ImportError:
        mitm = "?"
    return {
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "mitmproxy": mitm,
        "squid": squid.version(),
        "wrk": "yes" if shutil.which("wrk") else "no (Python keep-alive client)",
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["loadgen"]:
        return loadgen(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefix", default="egt-bench-", help="lab prefix (namespaces <prefix>sbx/gw/net)")
    parser.add_argument("--only", default=",".join(CONFIGS), help="configurations, comma-separated, in run order")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per measurement")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="proxy workers (default: cores)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients for conns/s and req/s")
    parser.add_argument("--stratum", type=int, default=300, help="Stratum attempts for time-to-block")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all configurations; medians reported")
    parser.add_argument(
        "--idle", type=float, default=2.0, help="seconds the gateway's CPU without load is measured (0: not)"
    )
    parser.add_argument("--json", type=pathlib.Path, help="also write every figure here")
    parser.add_argument(
        "--measure", default="", help="only these measurements, comma-separated (bulk1,bulk4,conns,http,ttb)"
    )
    parser.add_argument(
        "--split",
        action="store_true",
        help="also print each gateway process's user and kernel CPU ms per unit (from /proc/PID/stat)",
    )
    parser.add_argument(
        "--ttb-detail",
        action="store_true",
        help="also print time-to-block's percentiles, a histogram of 0.5 ms buckets and the slowest attempts",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("the gateway benchmark needs root (network namespaces, nftables)", file=sys.stderr)
        return 2
    order = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in order if name not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration(s) {unknown}: choose from {list(CONFIGS)}")
    info = machine()
    print("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    print(f"{args.seconds:g} s per measurement, {args.workers} proxy workers, {args.concurrency} clients", flush=True)
    rounds: dict[str, list[dict[str, Result]]] = {}
    skipped: dict[str, str] = {}
    started = time.monotonic()
    lab = netns.up(args.prefix)
    fake_internet: subprocess.Popen[bytes] | None = None
    try:
        _tune(lab)
        (lab.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        fake_internet = servers.start(lab, workers=os.cpu_count() or 1, log=lab.state_dir / "logs" / "servers.log")
        # rounds interleave the configurations, so a slow spell of a shared machine hits them alike
        for round_index in range(args.rounds):
            for name in order:
                if name in skipped:
                    continue
                print(f"== {name}, round {round_index + 1} of {args.rounds}", flush=True)
                try:
                    with CONFIGS[name](lab, args.workers) as nameserver:
                        rounds.setdefault(name, []).append(measure(lab, name, nameserver, args))
                except Exception as error:  # one configuration failing must not stop the others
                    skipped[name] = f"{type(error).__name__}: {error}"
                    print(f"  {name}: not run: {skipped[name]}", flush=True)
    finally:
        if fake_internet is not None:
            servers.stop(fake_internet)
        netns.down(args.prefix)
    results = {name: _medians(each) for name, each in rounds.items()}
    print(f"\nmedians over {args.rounds} round(s) (each round's figures above)")
    print("\n".join(report(results, skipped)))
    print(f"\nwhole run {time.monotonic() - started:.0f} s; lab {args.prefix} removed")
    if args.json:
        summary = {"machine": info, "args": vars(args) | {"json": str(args.json)}, "medians": results}
        args.json.write_text(json.dumps(summary | {"rounds": rounds, "skipped": skipped}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
