"""``egress gateway run``: starts every component, watches them, reloads them together, and fails closed.

Order: load and validate the policy → apply the nftables table (one transaction) → start the resolver (in this
process), the proxy workers (one process each, each handed the policy over its control channel) and the drop
logger (a thread) → supervise. If any component dies, the lockdown table (all sandbox traffic dropped) replaces the
policy table before anything else happens, then the rest is stopped and the exit status is 1; a clean stop
(SIGTERM/SIGINT) also leaves the lockdown in place, because a gateway that is not running must not forward.

SIGHUP reloads the policy with the protocol of `egress.gateway.reload`: one validated object, prepared by every
component (nftables, resolver, drop logger, allow sets, each proxy worker), then committed by all or by none.
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
import threading
from pathlib import Path

from egress.decisions import FanoutReporter, LogReporter
from egress.dnsserver.bindings import Bindings
from egress.dnsserver.resolver import Resolver, Upstream, serve
from egress.gateway.allowsets import AllowSetWriter
from egress.gateway.config import GatewayConfig, WorkerConfig
from egress.gateway.control import Payloads, WorkerLink, socket_pair
from egress.gateway.droplog import DropLogger
from egress.gateway.recorder import RecordReporter
from egress.gateway.reload import (
    NftTable,
    Participant,
    PolicyVersion,
    Refused,
    Reloader,
    SplitReload,
    Swap,
    load_version,
)
from egress.nft import runner
from egress.nft.render import render_lockdown
from egress.policy.lists import RulesError, load_name_lists
from egress.policy.model import Policy

log = logging.getLogger("egress.gateway")

START_DEADLINE = 60.0
"""Seconds a starting proxy worker has to take its first policy (it imports mitmproxy first)."""


def interface_address(name: str) -> str:
    """The IPv4 address of interface ``name`` (what sandboxes' DNS queries are addressed to), or ``""``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            packed = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return ""
    return socket.inet_ntoa(packed[20:24])


_SIOCGIFADDR = 0x8915


def participants(
    table: NftTable, resolver: Resolver, drops: DropLogger, allow_sets: AllowSetWriter, links: list[WorkerLink]
) -> list[Participant]:
    """Everything a reload reaches, the nftables table first (its commit is the one that may fail cleanly)."""
    return [
        table,
        Swap("resolver", resolver.reload),
        drops,  # prepared too: it names what the new table logs before its commit (egress.gateway.droplog)
        Swap("allow sets", allow_sets.reload),
        *links,
    ]


class Supervisor:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.version: PolicyVersion = load_version(config.policy)
        self.lists = load_name_lists(config.lists_dir)
        state = Path(config.state_dir)
        (state / "ca").mkdir(parents=True, exist_ok=True)
        self.bindings = Bindings(config.bindings_path)
        self.bindings.clear()
        self.recorder = RecordReporter(
            config.redis_url,
            config.gateway,
            config.spool_dir("gateway"),
            "gateway",
            self.policy.retention,
            spool_max_bytes=config.spool_share(),
        )
        self.reporter = FanoutReporter(LogReporter(), self.recorder)
        self.table = NftTable(config.nft_settings(), apply=self._apply_unless_failed)
        self.workers: list[subprocess.Popen[bytes]] = []
        self.links: list[WorkerLink] = []
        self.failed: str | None = None
        self.stopping = asyncio.Event()
        self.reloader: Reloader | None = None
        self.reload_pending = False
        self._nft = threading.Lock()
        """Held for every change of the table: a reload's apply (in a thread) and the lockdown never interleave."""

    @property
    def policy(self) -> Policy:
        """The policy in force in every component (replaced only when all of them committed a reload)."""
        return self.version.policy

    def _apply_unless_failed(self, script: str) -> None:
        with self._nft:
            if self.failed is not None:
                raise runner.NftError(f"the gateway is locked down ({self.failed})")
            runner.apply(script)

    def lockdown(self, why: str) -> None:
        with self._nft:
            try:
                runner.apply(render_lockdown(self.config.nft_settings(), self.policy))
                log.error("LOCKDOWN: all sandbox traffic dropped (%s)", why)
            except runner.NftError as exc:  # the policy table still redirects to dead ports: still closed
                log.error("lockdown table could not be applied (%s); policy table stays: %s", why, exc)

    async def start_workers(self) -> None:
        # One CA for every worker, made before any starts (only the workers' modules import mitmproxy).
        subprocess.run([sys.executable, "-m", "egress.proxy.mitm.ca", self.config.confdir], check=True)
        payloads = Payloads()
        for index in range(self.config.workers):
            worker = WorkerConfig.of(self.config, index)
            path = Path(self.config.state_dir) / f"worker-{index}.json"
            worker.write(path)
            mine, theirs = socket_pair()
            argv = [sys.executable, "-m", "egress.gateway.worker", "--config", str(path)]
            process = subprocess.Popen([*argv, "--control", str(theirs.fileno())], pass_fds=(theirs.fileno(),))
            theirs.close()
            self.workers.append(process)
            self.links.append(WorkerLink(worker.name, mine, payloads))
            log.info("proxy worker %d (pid %d) on port %d", index, process.pid, worker.port)
        for link in self.links:  # the first policy, by the same prepare and commit as every reload
            await asyncio.wait_for(link.prepare(self.version), START_DEADLINE)
            await asyncio.wait_for(link.commit(self.version), START_DEADLINE)

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

    def committed(self, version: PolicyVersion) -> None:
        self.version = version

    async def follow_reloads(self, reloader: Reloader) -> None:
        try:
            await reloader.serve()
        except SplitReload as exc:
            self.fail(f"a policy reload left components on different policies: {exc}")

    def request_reload(self) -> None:
        """SIGHUP: reload now, or as soon as every component has started."""
        if self.reloader is None:
            self.reload_pending = True
        else:
            self.reloader.request()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)  # from the start: SIGHUP's default is to exit
        try:
            await self.table.prepare(self.version)
            await self.table.commit(self.version)
        except (Refused, runner.NftError) as exc:
            self.fail(f"the policy's nftables table was not applied: {exc}")
            return 1
        log.info(
            "applied nftables table inet %s (%s): %d sandbox(es), proxy ports %s, dns port %d",
            self.config.table,
            self.version.label,
            len(self.policy.sandboxes),
            ",".join(map(str, self.config.proxy_ports)),
            self.config.dns_port,
        )
        allow_sets = AllowSetWriter(self.config.table, self.policy)
        resolver = Resolver(
            self.policy,
            Upstream(self.config.upstream_dns),
            self.bindings,
            self.reporter,
            self.lists,
            on_answer=allow_sets,
            listen_address=interface_address(self.config.sandbox_if),
            listen_port=self.config.dns_port,
        )
        handles = await serve(resolver, ["0.0.0.0", "::"], self.config.dns_port)
        log.info("resolver on port %d, upstream %s", self.config.dns_port, self.config.upstream_dns)
        drops = DropLogger(self.config.nflog_group, self.policy, self.lists, self.reporter, table=self.config.table)
        try:
            await self.start_workers()
        except Exception as exc:  # whatever stopped them, the gateway fails closed and says why
            self.fail(f"the proxy workers did not start: {type(exc).__name__}: {exc}")

        def died(why: str) -> None:
            loop.call_soon_threadsafe(self.fail, why)

        drops.start(on_death=died)
        self.reloader = reloader = Reloader(
            self.config.policy,
            participants(self.table, resolver, drops, allow_sets, self.links),
            self.version,
            on_commit=self.committed,
        )
        if self.reload_pending:
            reloader.request()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        tasks = [loop.create_task(self.watch_workers()), loop.create_task(self.follow_reloads(reloader))]
        log.info("gateway running: policy %s from %s", self.version.label, self.config.policy)
        await self.stopping.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.failed is None:
            self.lockdown("gateway stopped")
        self.stop_workers()
        drops.stop()
        allow_sets.close()
        for handle in handles:
            handle.close()  # type: ignore[attr-defined]
        self.recorder.close()
        log.info("stopped%s", f" after a failure: {self.failed}" if self.failed else "")
        return 1 if self.failed else 0

    def stop_workers(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                # After a failure the lockdown is in place already: no need to let the others finish anything.
                process.kill() if self.failed else process.terminate()
        for process in self.workers:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
        for link in self.links:
            link.close()
        log.info("proxy workers stopped")


def run_gateway(config: GatewayConfig) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gateway[%(process)d] %(levelname)s %(message)s")
    if os.geteuid() != 0:
        log.error("the gateway needs root (nftables, ports, nflog)")
        return 2
    try:
        supervisor = Supervisor(config)
    except RulesError:
        raise  # the command line prints every problem
    except ValueError as exc:  # settings the table cannot have (an interface name, ports)
        log.error("the gateway's settings are not usable: %s", exc)
        return 2
    try:
        return asyncio.run(supervisor.run())
    except Exception:
        supervisor.lockdown("gateway crashed")
        raise
