"""A proxy worker process: ``python -m egress.gateway.worker --config FILE --control FD`` (one per core).

Builds what a worker is made of apart from mitmproxy (its gate: the policy, bindings and detectors; its reporter)
and runs it with `egress.proxy.mitm.server.run_worker`. The policy comes only from the supervisor, over the control
channel ``FD`` (`egress.gateway.control`): the first version before the worker serves anything, later ones by the
reload protocol. The worker never reads the policy file, and ignores SIGHUP. When the supervisor's end of the
channel closes, the worker flushes its records and stops.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from dataclasses import dataclass

from egress.decisions import FanoutReporter, LogReporter
from egress.detect.names import make_name_detector
from egress.detect.registry import stream_detectors
from egress.dnsserver.bindings import Bindings
from egress.gateway.config import WorkerConfig
from egress.gateway.control import WorkerControl, open_stream
from egress.gateway.recorder import RecordReporter
from egress.gateway.reload import PolicyVersion
from egress.logsetup import configure
from egress.policy.lists import load_name_lists
from egress.proxy.gate import Gate
from egress.proxy.mitm.server import run_worker

log = logging.getLogger("egress.proxy")


@dataclass(frozen=True, slots=True)
class WorkerSetup:
    config: WorkerConfig
    gate: Gate
    recorder: RecordReporter

    def swap(self, version: PolicyVersion) -> None:
        """Commit: every new connection is decided under ``version`` (connections under way keep their sandbox)."""
        self.gate.policy = version.policy


def build_worker(config: WorkerConfig, version: PolicyVersion) -> WorkerSetup:
    lists = load_name_lists(config.lists_dir)
    bindings = Bindings(config.bindings_path)
    gate = Gate(version.policy, bindings.names_for, make_name_detector(lists), stream_detectors(lists))
    recorder = RecordReporter(
        config.redis_url,
        config.gateway,
        config.spool_dir,
        config.name,
        retention=version.policy.retention,
        spool_max_bytes=config.spool_max_bytes,
    )
    return WorkerSetup(config, gate, recorder)


async def serve(config: WorkerConfig, control_fd: int) -> None:
    """Take the first policy from the supervisor, then proxy and follow its reloads until either ends."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, log.warning, "%s: SIGHUP ignored (the supervisor reloads)", config.name)
    reader, writer = await open_stream(control_fd)
    control = WorkerControl(config.name)
    if not await control.until_committed(reader, writer) or control.current is None:
        log.warning("%s: the supervisor closed the control channel before sending a policy", config.name)
        return
    setup = build_worker(config, control.current)
    control.on_commit = setup.swap
    reporter = FanoutReporter(LogReporter(), setup.recorder)
    proxy = asyncio.create_task(run_worker(setup.gate, reporter, config.port, config.confdir, config.upstream_ca))
    follow = asyncio.create_task(control.serve(reader, writer))
    try:
        await asyncio.wait({proxy, follow}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (proxy, follow):
            task.cancel()
        await asyncio.gather(proxy, follow, return_exceptions=True)
        setup.recorder.close()  # what the worker decided reaches Redis (or its spool) before it exits
    if proxy.cancelled():
        log.warning("%s: the supervisor closed the control channel: stopping", config.name)
        return
    proxy.result()  # the proxy's error ends the worker (the supervisor then locks the gateway down)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m egress.gateway.worker", description="egress proxy worker")
    parser.add_argument("--config", required=True, help="worker configuration (JSON) written by the gateway")
    parser.add_argument(
        "--control", required=True, type=int, help="the inherited descriptor of the supervisor's control channel"
    )
    args = parser.parse_args(argv)
    configure("proxy")  # as the supervisor was told (--log-format, --log-level: inherited through the environment)
    logging.getLogger("mitmproxy").setLevel(logging.WARNING)  # one line per connection is the decision log's job
    asyncio.run(serve(WorkerConfig.read(args.config), args.control))


if __name__ == "__main__":
    main()
