"""``egress gateway run``: starts every component, watches them, and fails closed.

Order: load and validate the policy → apply the nftables table (one transaction) → start the resolver (in this
process), the proxy workers (one process each) and the drop logger (a thread) → supervise. If any component
dies, the lockdown table (all sandbox traffic dropped) replaces the policy table before anything else happens,
then the rest is stopped and the exit status is 1; a clean stop (SIGTERM/SIGINT) also leaves the lockdown in
place, because a gateway that is not running must not forward. SIGHUP reloads the policy: a file that does not
validate is reported and the running policy stays in force.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

from egress.decisions import FanoutReporter, LogReporter
from egress.dnsserver.bindings import Bindings
from egress.dnsserver.resolver import Resolver, Upstream, serve
from egress.gateway.allowsets import AllowSetWriter
from egress.gateway.config import GatewayConfig, WorkerConfig
from egress.gateway.droplog import DropLogger
from egress.gateway.recorder import RecordReporter
from egress.nft import runner
from egress.nft.render import GatewaySettings, render, render_lockdown
from egress.policy.lists import RulesError, load_name_lists
from egress.policy.loader import load_policy
from egress.policy.model import Policy

log = logging.getLogger("egress.gateway")


def interface_address(name: str) -> str:
    """The IPv4 address of interface ``name`` (what sandboxes' DNS queries are addressed to), or ``""``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            packed = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return ""
    return socket.inet_ntoa(packed[20:24])


_SIOCGIFADDR = 0x8915


def nft_settings(config: GatewayConfig) -> GatewaySettings:
    return GatewaySettings(
        sandbox_if=config.sandbox_if,
        uplink_if=config.uplink_if,
        proxy_ports=config.proxy_ports,
        dns_port=config.dns_port,
        nflog_group=config.nflog_group,
        table=config.table,
    )


class Supervisor:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.policy: Policy = load_policy(config.policy)
        self.lists = load_name_lists(config.lists_dir)
        state = Path(config.state_dir)
        (state / "ca").mkdir(parents=True, exist_ok=True)
        self.bindings = Bindings(config.bindings_path)
        self.bindings.clear()
        self.recorder = RecordReporter(config, component="gateway", retention=self.policy.retention)
        self.reporter = FanoutReporter(LogReporter(), self.recorder)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.failed: str | None = None
        self.stopping = asyncio.Event()

    def apply_policy(self) -> None:
        runner.apply(render(self.policy, nft_settings(self.config)))
        log.info(
            "applied nftables table inet %s: %d sandbox(es), proxy ports %s, dns port %d",
            self.config.table,
            len(self.policy.sandboxes),
            ",".join(map(str, self.config.proxy_ports)),
            self.config.dns_port,
        )

    def lockdown(self, why: str) -> None:
        try:
            runner.apply(render_lockdown(nft_settings(self.config), self.policy))
            log.error("LOCKDOWN: all sandbox traffic dropped (%s)", why)
        except runner.NftError as exc:  # the policy table still redirects to dead ports: still closed
            log.error("lockdown table could not be applied (%s); policy table stays: %s", why, exc)

    def start_workers(self) -> None:
        # One CA for every worker, made before any starts (mitmproxy is only imported by the workers' module).
        subprocess.run([sys.executable, "-m", "egress.gateway.worker", "--make-ca", self.config.confdir], check=True)
        for index in range(self.config.workers):
            path = Path(self.config.state_dir) / f"worker-{index}.json"
            WorkerConfig(self.config, index).write(path)
            process = subprocess.Popen([sys.executable, "-m", "egress.gateway.worker", "--config", str(path)])
            self.workers.append(process)
            log.info("proxy worker %d (pid %d) on port %d", index, process.pid, self.config.proxy_ports[index])

    async def watch_workers(self) -> None:
        while not self.stopping.is_set():
            for index, process in enumerate(self.workers):
                if process.poll() is not None:
                    self.fail(f"proxy worker {index} (pid {process.pid}) exited with {process.returncode}")
                    return
            await asyncio.sleep(0.2)

    def fail(self, why: str) -> None:
        if self.failed is None:
            self.failed = why
            self.lockdown(why)
            self.stopping.set()

    def reload(self) -> None:
        try:
            policy = load_policy(self.config.policy)
        except RulesError as exc:
            log.error("policy reload rejected, the running policy stays in force:\n%s", exc)
            return
        self.policy = policy
        self.apply_policy()
        self.resolver.reload(policy)
        for process in self.workers:
            process.send_signal(signal.SIGHUP)
        log.info("policy reloaded from %s", self.config.policy)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.apply_policy()
        self.allow_sets = AllowSetWriter(self.config.table)
        self.resolver = Resolver(
            self.policy,
            Upstream(self.config.upstream_dns),
            self.bindings,
            self.reporter,
            self.lists,
            on_answer=self.allow_sets,
            listen_address=interface_address(self.config.sandbox_if),
            listen_port=self.config.dns_port,
        )
        handles = await serve(self.resolver, ["0.0.0.0", "::"], self.config.dns_port)
        log.info("resolver on port %d, upstream %s", self.config.dns_port, self.config.upstream_dns)
        self.start_workers()
        drops = DropLogger(self.config.nflog_group, self.policy, self.lists, self.reporter)

        def died(why: str) -> None:
            loop.call_soon_threadsafe(self.fail, why)

        drops.start(on_death=died)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        watcher = loop.create_task(self.watch_workers())
        await self.stopping.wait()
        watcher.cancel()
        if self.failed is None:
            self.lockdown("gateway stopped")
        for process in self.workers:
            if process.poll() is None:
                # After a failure the lockdown is in place already: no need to let the others finish anything.
                process.kill() if self.failed else process.terminate()
        for process in self.workers:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
        log.info("proxy workers stopped")
        drops.stop()
        self.allow_sets.close()
        for handle in handles:
            handle.close()  # type: ignore[attr-defined]
        self.recorder.close()
        log.info("stopped%s", f" after a failure: {self.failed}" if self.failed else "")
        return 1 if self.failed else 0


def run_gateway(config: GatewayConfig) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gateway[%(process)d] %(levelname)s %(message)s")
    if os.geteuid() != 0:
        log.error("the gateway needs root (nftables, ports, nflog)")
        return 2
    supervisor = Supervisor(config)
    try:
        return asyncio.run(supervisor.run())
    except Exception:
        supervisor.lockdown("gateway crashed")
        raise
