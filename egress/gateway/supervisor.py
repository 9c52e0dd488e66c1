"""``egress gateway run``: starts every component, watches them, restarts what fails, reloads them together, and
fails closed.

Order: load and validate the policy → apply the guard table closed (`egress.nft.guard`: no sandbox traffic
passes unless the supervisor keeps it open) → apply the policy's nftables table (one transaction) → start the
resolver (in this process), the proxy workers (one process each, handed the policy over their control channels,
dying with this process) and the drop logger (a thread) → open the guard and keep it open (a heartbeat every
second) → supervise (`egress.gateway.watch`): every component is checked every second; a dead or hung one puts
the lockdown table in place of the policy table (and every living worker aborts its open connections: `lock`), is
restarted with backoff, and once every component is alive the policy table is applied again; one that fails 5
times within 5 minutes makes the gateway give up: exit status 1, the lockdown in force. A stop (SIGTERM/SIGINT)
also leaves the lockdown and the closed guard in place, because a gateway that is not running must not forward;
workers get SIGTERM (they flush their records) and SIGKILL only after a deadline, on a clean stop and after a
failure alike. The supervisor's own records are flushed on every stop.

SIGHUP reloads the policy with the protocol of `egress.gateway.reload`: one validated object, prepared by every
component (nftables, resolver, drop logger, allow sets, each proxy worker), then committed by all or by none. The
fleet's applied version (``egress rules apply``, in Redis) arrives through the same protocol
(`egress.gateway.policy_follow`): the ``--policy`` file is the bootstrap and SIGHUP the local override.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from egress import logbuffer
from egress.decisions import FanoutReporter, LogReporter
from egress.dnsserver.bindings import Bindings
from egress.dnsserver.resolver import Resolver, Upstream
from egress.gateway import heap, validate
from egress.gateway.allowsets import AllowSetWriter
from egress.gateway.components import (
    FAULT_HOOKS_ENV,
    DropLoggerPart,
    ProbeFilter,
    RecorderPart,
    ResolverPart,
    UdpGatePart,
    ask,
    fault_hook,
    interface_address,
)
from egress.gateway.config import GatewayConfig
from egress.gateway.control import Payloads
from egress.gateway.droplog import DropLogger
from egress.gateway.fdlimit import raise_fd_limit
from egress.gateway.metrics import MetricsServer, Snapshot
from egress.gateway.policy_follow import PolicyFollower
from egress.gateway.qtap import FindingTap
from egress.gateway.quarantine import Keeper
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
from egress.gateway.sdnotify import Notifier
from egress.gateway.udpgate import UdpGate
from egress.gateway.watch import GUARD_LIFE, Supervised, Watcher, keep_guard_open
from egress.gateway.webhook import Webhooks
from egress.gateway.workers import DnsWorkerSlot, WorkerSlot, cut_open, make_ca, stop_workers
from egress.nft import runner, xtqueue
from egress.nft.guard import render_guard
from egress.nft.render import UDP_GATE_CHAIN, render, render_lockdown, render_quarantine
from egress.policy.lists import RulesError, load_name_lists
from egress.policy.model import Policy
from egress.record.policy_store import PolicyHistory
from egress.record.quarantine_store import QuarantineStore

log = logging.getLogger("egress.gateway")

LOCKDOWN = "lockdown"
"""The reason a lockdown's cut of the workers' open connections is logged with, each close and their count."""


class _Reloads(Protocol):
    def reload(self, policy: Policy) -> None: ...


def participants(
    table: NftTable,
    resolver: _Reloads,
    drops: Participant,
    allow_sets: AllowSetWriter,
    links: Sequence[Participant],
    udp: _Reloads | None = None,
) -> list[Participant]:
    """Everything a reload reaches, the nftables table first (its commit is the one that may fail cleanly)."""
    return [
        table,
        Swap("resolver", resolver.reload),
        drops,  # prepared too: it names what the new table logs before its commit (egress.gateway.droplog)
        *([Swap("udp gate", udp.reload)] if udp is not None else []),
        Swap("allow sets", allow_sets.reload),
        *links,
    ]


class Supervisor:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.notify = Notifier.from_environment()
        """systemd's readiness, status and watchdog (a no-op outside a ``Type=notify`` unit)."""
        with heap.building():  # a large policy kept out of the collections that the resolver would wait for
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
            flow_log=self.policy.flow_log,
        )
        self.tap = FindingTap(config.findings_socket)
        self.reporter = ProbeFilter(FanoutReporter(LogReporter(), self.recorder, self.tap))
        self.keeper = Keeper(
            config.findings_socket,
            config.quarantine_state,
            config.gateway,
            lambda: self.policy,
            self._apply_quarantine,
            QuarantineStore.from_url(config.redis_url),
            Webhooks(),
        )
        """Cuts off sandboxes whose findings trip their quarantine rule (egress.gateway.quarantine)."""
        self.table = NftTable(
            config.nft_settings(), apply=self._apply_unless_locked, quarantined=self.keeper.quarantined
        )
        payloads = Payloads()
        self.slots = [WorkerSlot(config, index, payloads, lambda: self.version) for index in range(config.workers)]
        # Resolver processes past the supervisor's own: supervised, reloaded, stopped and cut as the proxy workers
        current = lambda: self.version  # noqa: E731 (the slots' one view of the version in force)
        self.slots += [DnsWorkerSlot(config, i, payloads, current, ask) for i in range(1, config.dns_processes)]
        self.allow_sets = AllowSetWriter(config.table, self.policy)
        self.resolver = ResolverPart(self._new_resolver, config.dns_port)
        self.drops = DropLoggerPart(self._new_drop_logger, self._died)
        self.udp = UdpGatePart(self._new_udp_gate, self._udp_died)
        self.watcher: Watcher | None = None
        self.failed: str | None = None
        """Why the gateway gave up (it stops, the lockdown in force)."""
        self.locked: str | None = None
        """Why the lockdown is in force while components recover (the policy table comes back after)."""
        self._locks = 0
        """Lockdowns so far: a recovery re-applies the policy table only if no other began since."""
        self.stopping = asyncio.Event()
        self.reloader: Reloader | None = None
        self.reload_pending = False
        self.follower: PolicyFollower | None = None
        """Follows the fleet's applied version (None when ``policy_poll_s`` is 0)."""
        self._nft = threading.Lock()
        """Held for every change of the table: a reload's apply (in a thread) and the lockdown never interleave."""
        self._table_applied = False
        """Whether this process applied the table yet (the first apply replaces it whole: `_replace`)."""
        self.metrics: MetricsServer | None = None
        self._cutting: set[asyncio.Task[None]] = set()
        """Lockdowns' cuts of the workers' open connections under way (kept referenced until done)."""

    @property
    def policy(self) -> Policy:
        """The policy in force in every component (replaced only when all of them committed a reload)."""
        return self.version.policy

    def _new_resolver(self) -> Resolver:
        return Resolver(
            self.policy,
            Upstream(self.config.upstream_dns),
            self.bindings,
            self.reporter,
            self.lists,
            on_answer=self.allow_sets,
            listen_address=interface_address(self.config.sandbox_if),
            listen_port=self.config.dns_port,
            flows=self.recorder,
        )

    def _new_drop_logger(self) -> DropLogger:
        return DropLogger(self.config.nflog_group, self.policy, self.lists, self.reporter, table=self.config.table,
                          sandbox_if=self.config.sandbox_if, name_of=_interface_name)  # fmt: skip

    def _new_udp_gate(self) -> UdpGate:
        return UdpGate(self.config.udp_queue, self.policy, self.lists, self.reporter, flows=self.recorder)

    def _apply_unless_locked(self, script: str) -> None:
        with self._nft:
            if self.failed is not None or self.locked is not None:
                raise runner.NftError(f"the gateway is locked down ({self.failed or self.locked})")
            self._replace(script)

    def _replace(self, script: str, queue: bool = True) -> None:
        """Replace the table (the lock held), keeping what the drop counters counted and the logger has not read
        (`runner.replace_table`); whole the first time: what an earlier process counted, this one's logger did not
        see logged, and would report again."""
        if self._table_applied:
            if not runner.replace_table(script, self.config.table):
                log.warning("table inet %s replaced whole: drop counts not yet read are lost", self.config.table)
        else:
            runner.apply(script)
        self._table_applied = True
        if queue:  # the policy table's UDP gate chain gets its queue rule (until then its UDP is dropped)
            try:
                xtqueue.install(self.config.table, UDP_GATE_CHAIN, self.config.udp_queue)
            except OSError as exc:
                raise runner.NftError(
                    "the udp gate's queue rule was not added (udp networks stay dropped)", str(exc)
                ) from exc

    def _apply_quarantine(self, names: frozenset[str]) -> None:
        with self._nft:
            if self.failed is not None or self.locked is not None:
                return  # the lockdown drops everything; the table `unlock` applies holds the quarantine
            runner.apply(render_quarantine(self.policy, self.config.nft_settings(), names))

    def lockdown(self, why: str) -> None:
        with self._nft:
            try:
                self._replace(render_lockdown(self.config.nft_settings(), self.policy), queue=False)
                log.error("LOCKDOWN: all sandbox traffic dropped (%s)", why)
            except runner.NftError as exc:  # the policy table still redirects to dead ports: still closed
                log.error("lockdown table could not be applied (%s); policy table stays: %s", why, exc)

    def lock(self, why: str) -> None:
        """A component is down: the lockdown until every component is alive again (`unlock`). The table drops the
        sandboxes' packets; the living workers are told to abort every open connection (`cut_open`), else what
        their relays hold would go on reaching the destination during the lockdown (red team 7)."""
        self.locked = why
        self._locks += 1
        self.lockdown(why)
        self.notify.status(f"lockdown: {why}")
        task = asyncio.get_running_loop().create_task(cut_open(self.slots, LOCKDOWN))
        self._cutting.add(task)
        task.add_done_callback(self._cutting.discard)

    async def unlock(self) -> None:
        episode = self._locks

        def reapply() -> None:
            with self._nft:
                if self.failed is None and self._locks == episode:  # else another component went down meanwhile
                    self._replace(render(self.policy, self.config.nft_settings(), self.keeper.quarantined()))
                    self.keeper.refresh()
                    self.locked = None
                    self.notify.status("running")

        try:
            await asyncio.to_thread(reapply)
        except (ValueError, runner.NftError) as exc:
            self.fail(f"the policy table could not be applied again after a recovery: {exc}")
            return
        if self.failed is None and self.locked is None:
            log.warning("every component alive: policy table %s in force again", self.version.label)

    def guard(self, life: int) -> None:
        """Apply the guard table open for ``life`` seconds (0: closed)."""
        runner.apply_here(render_guard(self.config.nft_settings(), self.policy, life))

    def fail(self, why: str) -> None:
        """Give up: the lockdown, then the gateway stops (exit status 1)."""
        if self.failed is None:
            self.failed = why
            self.lockdown(why)
            log.critical("GATEWAY FAILED, LOCKDOWN STAYS: %s", why)
            self.stopping.set()

    def _died(self, why: str) -> None:
        """The drop logger's thread says it died (called from that thread)."""
        self.loop.call_soon_threadsafe(self._notice, self.drops.name, why)

    def _udp_died(self, why: str) -> None:
        """The UDP gate's thread says it died (called from that thread)."""
        self.loop.call_soon_threadsafe(self._notice, self.udp.name, why)

    def _notice(self, name: str, why: str) -> None:
        if self.watcher is not None:
            self.watcher.notice(name, why)
        else:
            self.fail(f"{name}: {why}")

    def committed(self, version: PolicyVersion) -> None:
        self.version = version
        self.keeper.refresh()  # a quarantine between the new table's render and its commit is applied again
        if self.follower is not None:
            self.follower.committed(version)

    async def follow_fleet(self, follower: PolicyFollower) -> None:
        """The fleet's policy, applied as it changes; a follower's bug restarts it (the running policy stays)."""
        while True:
            try:
                await follower.run()
            except SplitReload as exc:
                self.fail(f"a fleet policy version left components on different policies: {exc}")
                return
            except Exception:  # a follower's own bug must not end following nor the gateway
                log.exception("the fleet policy follower failed; it starts again")
                await asyncio.sleep(max(follower.interval, 1.0))

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

    def _sources(self) -> list[tuple[str, Snapshot | None, float]]:
        """Every process's counts, for the metrics endpoint (read in its thread): this one's now, each worker's
        from its last ping answer."""
        now = time.monotonic()
        found: list[tuple[str, Snapshot | None, float]] = [("gateway", self.recorder.snapshot(), 0.0)]
        for slot in self.slots:
            link = slot.link
            taken = link.snapshot if link is not None else None
            found.append((slot.name, taken, now - link.snapshot_at if link is not None and taken else 0.0))
        return found

    async def start(self) -> bool:
        """Every component, in order; ``False`` when the gateway failed (closed) instead."""
        if self.config.metrics_listen:  # first: the counts are worth seeing while the rest starts or fails
            self.metrics = MetricsServer.start(
                self.config.metrics_listen, interface_address(self.config.sandbox_if), self._sources
            )
        try:
            await asyncio.to_thread(self.guard, 0)  # closed first: without a supervisor, nothing passes
            await asyncio.to_thread(self.keeper.sync)  # the fleet's quarantines are in the first table already
            await self.table.prepare(self.version)
            await self.table.commit(self.version)
        except (Refused, runner.NftError) as exc:
            self.fail(f"the guard or the policy's nftables table was not applied: {exc}")
            return False
        settings = self.config
        log.info(
            "applied nftables tables inet %s (%s) and its guard: %d sandbox(es), proxy ports %s, dns port %d",
            settings.table,
            self.version.label,
            len(self.policy.sandboxes),
            ",".join(map(str, settings.proxy_ports)),
            settings.dns_port,
        )
        try:
            self.keeper.start()
            await self.resolver.start()
            log.info("resolver on port %d, upstream %s", settings.dns_port, settings.upstream_dns)
            permitted = sorted({d for sandbox in self.policy.sandboxes for d in sandbox.decrypt})
            permitted = permitted if self.config.ca_constrain else []
            await asyncio.to_thread(make_ca, settings.confdir, self.config.gateway, permitted)
            await asyncio.gather(*(slot.start() for slot in self.slots))
            self.drops.start()
            self.udp.start()
        except Exception as exc:  # whatever stopped them, the gateway fails closed and says why
            self.fail(f"the gateway's components did not start: {type(exc).__name__}: {exc}")
            return False
        heap.settle()  # what is loaded by now lives as long as the process: out of the collector's walks
        return True

    async def run(self) -> int:
        self.loop = loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)  # from the start: SIGHUP's default is to exit
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stopping.set)
        try:
            if await self.start() and not self.stopping.is_set():
                await self.supervise(loop)
        finally:
            await self.stop()
        log.info("stopped%s", f" after a failure: {self.failed}" if self.failed else "")
        return 1 if self.failed else 0

    async def supervise(self, loop: asyncio.AbstractEventLoop) -> None:
        self.reloader = reloader = Reloader(
            self.config.policy,
            participants(self.table, self.resolver, self.drops, self.allow_sets, self.slots, self.udp),
            self.version,
            on_commit=self.committed,
            load=functools.partial(validate.load, loop=loop),  # parsed in a child, rebuilt on the loop by chunks
        )
        if self.reload_pending:
            reloader.request()
        if self.config.policy_poll_s > 0:
            history = PolicyHistory.from_url(self.config.redis_url)
            self.follower = PolicyFollower(
                history,
                self.config.gateway,
                reloader,
                self.config.policy_poll_s,
                parse=functools.partial(validate.parse, loop=loop),
            )
        recorder = RecorderPart(self.recorder)
        parts: list[Supervised] = [*self.slots, self.resolver, self.drops, self.udp, recorder, self.keeper]
        # The watchdog is fed by the supervision loop itself: a hung loop starves it and systemd restarts the unit.
        self.watcher = Watcher(parts, lock=self.lock, unlock=self.unlock, give_up=self.fail, beat=self.notify.watchdog)
        try:
            hook = fault_hook(os.environ.get(FAULT_HOOKS_ENV, ""), self.resolver, self.drops, recorder, self.udp)
        except ValueError as exc:
            self.fail(str(exc))
            return
        if hook is not None:
            log.warning("%s is set: SIGUSR1 injects a fault (tests only)", FAULT_HOOKS_ENV)
            loop.add_signal_handler(signal.SIGUSR1, hook)
        await asyncio.to_thread(self.guard, GUARD_LIFE)
        tasks = [
            loop.create_task(self.watcher.run()),
            loop.create_task(self.follow_reloads(reloader)),
            loop.create_task(keep_guard_open(self.guard)),
        ]
        if self.follower is not None:
            tasks.append(loop.create_task(self.follow_fleet(self.follower)))
        log.info("gateway running: policy %s from %s", self.version.label, self.config.policy)
        self.notify.ready(f"running: policy {self.version.label}")
        try:
            await self.stopping.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.follower is not None:
                self.follower.history.close()

    async def stop(self) -> None:
        """Closed first (the lockdown, the guard), then every component; the records flushed whatever happened."""
        self.notify.stopping("stopping: lockdown")
        try:
            if self.failed is None:
                self.lockdown("gateway stopped")
            try:
                await asyncio.to_thread(self.guard, 0)
            except runner.NftError as exc:  # the guard still closes by itself within its life
                log.error("guard table not closed now (it closes within %d s): %s", GUARD_LIFE, exc)
            await stop_workers(self.slots)
            log.info("proxy workers stopped")
            self.drops.stop()
            self.udp.stop()
            self.allow_sets.close()
            self.resolver.close()
            self.keeper.stop()
            self.tap.close()
        finally:
            await asyncio.to_thread(self.recorder.close)
            if self.metrics is not None:
                await asyncio.to_thread(self.metrics.close)
            logbuffer.flush()  # the allowed decisions' lines still buffered


def run_gateway(config: GatewayConfig) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gateway[%(process)d] %(levelname)s %(message)s")
    if os.geteuid() != 0:
        log.error("the gateway needs root (nftables, ports, nflog)")
        return 2
    limit = raise_fd_limit()  # the resolver's TCP connections, the drop logger, the spool (the workers inherit it)
    log.info("descriptor limit %d", limit)
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


def _interface_name(index: int) -> str | None:
    """The name of interface ``index`` in the gateway's namespace (the drop logger names a spoofed drop's sandbox)."""
    try:
        return socket.if_indextoname(index)
    except OSError:
        return None
