"""``egress lab demo``: the gateway for real in the lab, and what a misbehaving agent would try through it.

Brings the lab up, starts the fake internet (servers in the internet namespace), a redis-server and the whole
gateway (``egress gateway run``) in the gateway namespace, plays every attempt from the sandbox namespace,
prints what happened to each, then the records read back from Redis. `GatewayRun` is also what the end-to-end
tests use: one lab, one gateway, stopped and removed on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from egress import shipped
from egress.gateway.config import DNS_PORT, PROXY_PORT
from egress.lab import netns, servers
from egress.lab.scenarios import SCENARIOS, ScenarioResult, run_in_sandbox
from egress.lab.topology import GATEWAY_SBX_V4, Lab, server

LAB_POLICY = shipped.lab_policy()
REDIS_PORT = 6379
"""The lab's own redis-server, in the gateway namespace."""
LAB_WORKERS = 2
"""Two proxy workers whatever the machine's cores: the lab always exercises the spread across workers."""
READY_TIMEOUT = 30.0


class DemoError(RuntimeError):
    pass


def _wait_for(check: Callable[[], bool], what: str, timeout: float = READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise DemoError(f"timed out waiting for {what}")


def _tcp_listening(ns: str, port: int) -> bool:
    done = netns.exec_in(ns, ["ss", "-Htln", f"sport = :{port}"], timeout=5)
    return bool(done.stdout.strip())


@dataclass
class GatewayRun:
    """A running lab with servers, Redis and the gateway; `stop` leaves nothing behind."""

    lab: Lab
    policy: pathlib.Path
    workers: int = LAB_WORKERS
    ready_timeout: float = READY_TIMEOUT
    """Seconds to wait for each part to listen (tests stretch it on a slow machine)."""
    processes: list[subprocess.Popen[bytes]] | None = None
    gateway: subprocess.Popen[bytes] | None = None
    redis: str | None = None
    """A Redis (or ``redis+cluster://``) URL the gateway namespace reaches, shared with other gateways; None starts
    the lab's own redis-server in the gateway namespace."""
    extra_args: tuple[str, ...] = ()
    """More ``egress gateway run`` options (a test's ``--metrics-listen``)."""

    @property
    def state(self) -> pathlib.Path:
        return self.lab.state_dir / "gateway"

    @property
    def redis_url(self) -> str:
        if self.redis is not None:
            return self.redis
        return f"redis://127.0.0.1:{REDIS_PORT}/0"

    @property
    def gateway_ca(self) -> pathlib.Path:
        return self.state / "ca" / "mitmproxy-ca-cert.pem"

    def start(self) -> None:
        self.processes = []
        self.state.mkdir(parents=True, exist_ok=True)
        log_dir = self.lab.state_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        fake_internet = netns.popen_in(
            self.lab.internet_ns,
            [sys.executable, "-m", "egress.lab.servers", "--prefix", self.lab.prefix],
            stdout=(log_dir / "servers.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        self.processes.append(fake_internet)
        if self.redis is None:
            self._start_redis(log_dir)
        _wait_for(lambda: _tcp_listening(self.lab.internet_ns, 443), "the lab's servers", self.ready_timeout)
        self.start_gateway()

    def _start_redis(self, log_dir: pathlib.Path) -> None:
        assert self.processes is not None
        redis = netns.popen_in(
            self.lab.gateway_ns,
            [
                shutil.which("redis-server") or "redis-server",
                *("--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"),
                *("--dir", str(self.state)),
            ],
            stdout=(log_dir / "redis.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        self.processes.append(redis)
        _wait_for(lambda: _tcp_listening(self.lab.gateway_ns, REDIS_PORT), "redis-server", self.ready_timeout)

    def start_gateway(self) -> None:
        log_dir = self.lab.state_dir / "logs"
        argv = [
            sys.executable,
            *("-m", "egress", "gateway", "run"),
            *("--policy", str(self.policy)),
            *("--sandbox-if", self.lab.gateway_sandbox_if, "--uplink-if", self.lab.gateway_uplink_if),
            *("--upstream-dns", server("ns").v4, "--state-dir", str(self.state)),
            *("--workers", str(self.workers), "--proxy-port", str(PROXY_PORT), "--dns-port", str(DNS_PORT)),
            *("--redis-url", self.redis_url, "--name", f"{self.lab.prefix}gw"),
            *("--upstream-ca", str(self.lab.ca_file)),
            *self.extra_args,
        ]
        self.gateway = netns.popen_in(
            self.lab.gateway_ns, argv, stdout=(log_dir / "gateway.log").open("ab"), stderr=subprocess.STDOUT
        )
        _wait_for(self.gateway_ready, "the gateway", self.ready_timeout)

    def gateway_ready(self) -> bool:
        if self.gateway is not None and self.gateway.poll() is not None:
            raise DemoError(f"the gateway exited with {self.gateway.returncode}: see {self.lab.state_dir}/logs")
        ports = [PROXY_PORT + index for index in range(self.workers)]
        return all(_tcp_listening(self.lab.gateway_ns, port) for port in ports) and _tcp_listening(
            self.lab.gateway_ns, DNS_PORT
        )

    def attempts(self, names: Sequence[str] = tuple(SCENARIOS), ipv6: bool = False) -> list[ScenarioResult]:
        return run_in_sandbox(
            self.lab, names, nameserver=GATEWAY_SBX_V4, ipv6=ipv6, cafiles=[self.gateway_ca], timeout=180
        )

    def stop_gateway(self) -> None:
        if self.gateway is not None and self.gateway.poll() is None:
            self.gateway.send_signal(signal.SIGTERM)
            try:
                self.gateway.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.gateway.kill()
                self.gateway.wait(timeout=5)

    def stop(self) -> None:
        """Stop the gateway and every server, each whatever happened to the others (a failure, or a test's timeout
        firing in the middle, must not leave the rest running)."""
        with contextlib.ExitStack() as stack:
            for process in self.processes or []:
                stack.callback(servers.stop, process)
            stack.callback(self.stop_gateway)  # first: callbacks run last in, first out


@contextlib.contextmanager
def running_gateway(
    prefix: str,
    policy: pathlib.Path = LAB_POLICY,
    workers: int = LAB_WORKERS,
    ready_timeout: float = READY_TIMEOUT,
    extra_args: tuple[str, ...] = (),
) -> Iterator[GatewayRun]:
    """A fresh lab with everything running (``extra_args``: more ``egress gateway run`` options); torn down
    (namespaces, processes, state) on exit."""
    lab = netns.up(prefix)
    run = GatewayRun(lab, policy, workers, ready_timeout, extra_args=extra_args)
    try:
        run.start()
        yield run
    finally:
        try:
            run.stop()
        finally:  # whatever stopping raised: `netns.down` also stops every process left in the namespaces
            netns.down(prefix)


def _print_results(results: list[ScenarioResult]) -> None:
    print(f"{'ATTEMPT':<18} {'OUTCOME':<9} {'MS':>7}  DETAIL")
    for result in results:
        print(f"{result.name:<18} {result.outcome:<9} {result.elapsed_ms:>7.1f}  {result.detail[:110]}")


def _print_records(run: GatewayRun) -> None:
    """The records as `egress events` shows them, read inside the gateway namespace (where Redis listens)."""
    argv = [sys.executable, "-m", "egress", "events", "--redis-url", run.redis_url]
    done = netns.exec_in(run.lab.gateway_ns, argv, timeout=30)
    lines = done.stdout.rstrip().splitlines()
    print(f"\n{max(len(lines) - 1, 0)} record(s) in Redis (egress events):")
    print(done.stdout.rstrip() or done.stderr.strip())


def play_as_harness(run: GatewayRun, names: Sequence[str] = tuple(SCENARIOS)) -> list[ScenarioResult]:
    """Play each attempt as one agent action, the way a sandbox harness would, and report the actions.

    Each attempt runs as its own command inside the sandbox; its start and end times are reported through
    `egress actions record` (inside the gateway namespace, where the record store is), so the timeline can tie
    every blocked attempt to the action that caused it.
    """
    results: list[ScenarioResult] = []
    actions: list[dict[str, object]] = []
    for index, name in enumerate(names):
        start = time.time()
        results += run.attempts([name])
        actions.append(
            {
                "sandbox": "agent",
                "id": f"demo-{index:02d}-{name}",
                "kind": "shell_command",
                "command": f"python -m egress.lab.scenarios {name}",
                "start": round(start, 6),
                "end": round(time.time(), 6),
            }
        )
    lines = "".join(json.dumps(action) + "\n" for action in actions)
    argv = [sys.executable, "-m", "egress", "actions", "record", "--redis-url", run.redis_url, "--stdin"]
    done = netns.exec_in(run.lab.gateway_ns, argv, input=lines, timeout=30)
    if done.returncode != 0:
        print(f"reporting the demo's actions failed: {done.stderr.strip()}", file=sys.stderr)
    return results


def _print_timeline(run: GatewayRun) -> None:
    argv = [sys.executable, "-m", "egress", "timeline", "agent", "--redis-url", run.redis_url, "--slack", "0"]
    done = netns.exec_in(run.lab.gateway_ns, argv, timeout=30)
    print("\nTimeline of sandbox 'agent' (egress timeline agent): each attempt under the action that made it")
    print(done.stdout.rstrip() or done.stderr.strip())


def demo(prefix: str = "egress-", keep: bool = False) -> int:
    """Run the whole demo; return 0 when it ran."""
    if os.geteuid() != 0:
        print("egress lab demo needs root (network namespaces, nftables)", file=sys.stderr)
        return 2
    lab = netns.up(prefix)
    run = GatewayRun(lab, LAB_POLICY)
    try:
        run.start()
        print(f"lab {prefix!r} up; gateway running in {lab.gateway_ns}; playing attempts from {lab.sandbox_ns}\n")
        _print_results(play_as_harness(run))
        run.stop_gateway()  # flushes the recorders' open aggregation windows
        _print_records(run)
        _print_timeline(run)
    finally:
        run.stop()
        if not keep:
            netns.down(prefix)
    return 0
