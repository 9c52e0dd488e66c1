"""A proxy worker process: ``python -m egress.gateway.worker --config FILE --control FD`` (one per core).

Builds what a worker is made of apart from mitmproxy (its gate: the policy, bindings and detectors; its reporter)
and runs it with `egress.proxy.mitm.server.run_worker`. The policy comes only from the supervisor, over the control
channel ``FD`` (`egress.gateway.control`): the first version before the worker serves anything, later ones by the
reload protocol. The worker never reads the policy file, and ignores SIGHUP.

A worker stops the same way on SIGTERM (the supervisor's stop), on SIGINT and when the supervisor's end of the
channel closes: it stops accepting, then flushes its records (`RecordReporter.close`) and exits, within
`STOP_DEADLINE` whatever hangs. It never outlives the supervisor: the kernel sends it SIGTERM when the supervisor
dies, even by SIGKILL (``PR_SET_PDEATHSIG``, `die_with_parent`), and the channel's end closes at the same moment.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import threading
from dataclasses import dataclass, field

from egress import logbuffer
from egress.decisions import FanoutReporter, LogReporter
from egress.detect.names import make_name_detector
from egress.detect.registry import stream_detectors
from egress.dnsserver.bindings import Bindings
from egress.gateway.config import WorkerConfig
from egress.gateway.control import WorkerControl, open_stream
from egress.gateway.fdlimit import raise_fd_limit
from egress.gateway.qtap import FindingTap
from egress.gateway.recorder import RecordReporter
from egress.gateway.reload import PolicyVersion
from egress.logsetup import configure
from egress.parentage import die_with_parent
from egress.policy.lists import load_name_lists
from egress.policy.model import OnApply
from egress.proxy.gate import Gate
from egress.proxy.idle import IdleBound
from egress.proxy.mitm.server import run_worker
from egress.proxy.openflows import OpenFlows
from egress.proxy.poller import front_loop
from egress.thishost import OwnAddresses

log = logging.getLogger("egress.proxy")

STOP_DEADLINE = 8.0
"""Seconds a stopping worker has to close and flush before it exits regardless (the supervisor waits longer)."""


def _exit_after(seconds: float, name: str) -> None:
    """A stop that hangs (a wedged flush, mitmproxy's shutdown) must still end the process: exit hard later."""

    def hard_exit() -> None:
        log.error("%s: not stopped within %.0f s: exiting now", name, seconds)
        os._exit(1)

    timer = threading.Timer(seconds, hard_exit)
    timer.daemon = True
    timer.start()


@dataclass(frozen=True, slots=True)
class WorkerSetup:
    config: WorkerConfig
    gate: Gate
    recorder: RecordReporter
    open_flows: OpenFlows = field(default_factory=OpenFlows)
    """The connections this worker let through and has open."""

    def swap(self, version: PolicyVersion) -> None:
        """Commit: every new connection is decided under ``version``; connections under way keep their sandbox and
        decision, unless the policy says ``on_apply: close_forbidden``: then those it blocks are closed."""
        self.gate.policy = version.policy
        if version.policy.on_apply is OnApply.CLOSE_FORBIDDEN:
            self.open_flows.cut(version.policy, self.gate.names_for)

    def cut_all(self, why: str) -> int:
        """The lockdown (the supervisor's ``CUT``): every open connection aborted; how many."""
        return len(self.open_flows.cut_all(why))


def build_worker(config: WorkerConfig, version: PolicyVersion) -> WorkerSetup:
    lists = load_name_lists(config.lists_dir)
    bindings = Bindings(config.bindings_path)
    detectors = make_name_detector(lists), stream_detectors(lists)
    gate = Gate(version.policy, bindings.names_for, *detectors, own=OwnAddresses())
    recorder = RecordReporter(
        config.redis_url,
        config.gateway,
        config.spool_dir,
        config.name,
        retention=version.policy.retention,
        spool_max_bytes=config.spool_max_bytes,
        flow_log=version.policy.flow_log,
    )
    return WorkerSetup(config, gate, recorder)


@dataclass(frozen=True, slots=True)
class Started:
    """A supervised process (a proxy worker, a resolver process) that took its first policy (`take_first_policy`)."""

    control: WorkerControl
    policy: PolicyVersion
    """The version committed first: the one to serve."""
    stop: asyncio.Event
    """Set by SIGTERM or SIGINT."""
    stopped: asyncio.Task[bool]
    """Ends when ``stop`` is set."""
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


async def take_first_policy(name: str, control_fd: int) -> Started | None:
    """Handle the stop signals (SIGHUP ignored), open the supervisor's control channel and wait for its first
    committed policy; None when a stop or the channel's end came first."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, log.warning, "%s: SIGHUP ignored (the supervisor reloads)", name)
    stop = asyncio.Event()

    def stop_now(signum: int) -> None:
        if not stop.is_set():
            log.info("%s: %s: stopping", name, signal.Signals(signum).name)
            _exit_after(STOP_DEADLINE, name)
            stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_now, signum)
    reader, writer = await open_stream(control_fd)
    control = WorkerControl(name)
    stopped = asyncio.create_task(stop.wait())
    starting = asyncio.create_task(control.until_committed(reader, writer))
    await asyncio.wait({stopped, starting}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done() or not starting.result() or control.current is None:
        starting.cancel()
        stopped.cancel()
        log.warning("%s: stopped before the supervisor sent a policy", name)
        return None
    return Started(control, control.current, stop, stopped, reader, writer)


async def serve(config: WorkerConfig, control_fd: int) -> None:
    """Take the first policy from the supervisor, then proxy and follow its reloads until either ends."""
    started = await take_first_policy(config.name, control_fd)
    if started is None:
        return
    control, stop, stopped, reader, writer = (
        started.control,
        started.stop,
        started.stopped,
        started.reader,
        started.writer,
    )
    setup = build_worker(config, started.policy)
    control.on_commit = setup.swap
    control.on_cut = setup.cut_all
    control.stats = lambda: setup.recorder.snapshot().to_json()  # with each ping: the gateway's metrics
    tap = [FindingTap(config.findings_socket)] if config.findings_socket else []
    reporter = FanoutReporter(LogReporter(), setup.recorder, *tap)
    proxy = asyncio.create_task(
        run_worker(
            setup.gate,
            reporter,
            config.port,
            config.confdir,
            config.upstream_ca,
            open_flows=setup.open_flows,
            flows=setup.recorder,
            idle=IdleBound(config.idle_limit, config.idle_per_sandbox),
            idle_timeout=config.idle_timeout,
        )
    )
    follow = asyncio.create_task(control.serve(reader, writer))
    try:
        await asyncio.wait({proxy, follow, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # The proxy first: its listening sockets close, so no connection is accepted that could not be recorded.
        for task in (proxy, follow, stopped):
            task.cancel()
        await asyncio.gather(proxy, follow, stopped, return_exceptions=True)
        setup.recorder.close()  # what the worker decided reaches Redis (or its spool) before it exits
        logbuffer.flush()  # and its allowed decisions' lines the log
    if proxy.cancelled():
        if not stop.is_set():
            log.warning("%s: the supervisor closed the control channel: stopping", config.name)
        return
    proxy.result()  # the proxy's error ends the worker (the supervisor then locks the gateway down)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m egress.gateway.worker", description="egress proxy worker")
    parser.add_argument("--config", required=True, help="worker configuration (JSON) written by the gateway")
    parser.add_argument(
        "--control", required=True, type=int, help="the inherited descriptor of the supervisor's control channel"
    )
    parser.add_argument("--parent", type=int, help="the supervisor's pid: the worker dies with it")
    args = parser.parse_args(argv)
    configure("proxy")  # as the supervisor was told (--log-format, --log-level: inherited through the environment)
    if args.parent is not None:
        die_with_parent(args.parent)
    raise_fd_limit()
    logging.getLogger("mitmproxy").setLevel(logging.WARNING)  # one line per connection is the decision log's job
    # The front's sockets in the loop's own epoll (`egress.proxy.poller`): the default loop kind, another selector.
    asyncio.run(serve(WorkerConfig.read(args.config), args.control), loop_factory=front_loop)


if __name__ == "__main__":
    main()
