"""A resolver process past the first: ``python -m egress.gateway.dnsworker --config FILE --control FD``.

With ``gateway run --dns-processes N`` the supervisor answers the DNS of the sandboxes `egress.policy.partition`
gives process 0 in its own event loop, as it always did, and starts this process for each other index k: the
nftables table redirects the DNS (UDP and TCP) of process k's sandboxes to ``dns_port + k``
(`egress.nft.render.GatewaySettings.more_dns_ports`), where this process listens on the same sockets as the
supervisor's resolver (`egress.dnsserver.listen.serve`: a socket per sandbox, TCP bounded and shared per turn). It
has the resolver's own parts, so its sandboxes are judged, cached, tracked and recorded exactly as process 0's:

- its `Resolver` (answer cache, fast path, one tunnel tracker per sandbox: a sandbox's queries all come here);
- the bindings file the proxy workers read (SQLite WAL, shared by every writer);
- its own allow-set writer (`egress.gateway.allowsets`: ``nft add element`` into its sandboxes' sets only);
- its own recorder, spool and flow log (`RecordReporter`, as a proxy worker's), the decision log and the
  quarantine keeper's tap.

The policy comes only from the supervisor, over the control channel (`egress.gateway.control`, the proxy workers'
protocol): the first version before it listens, later ones by the reload's prepare and commit. It stops as a proxy
worker does (SIGTERM, SIGINT, the channel's close, the supervisor's death: ``PR_SET_PDEATHSIG``), flushing its
records. The supervisor supervises it as a proxy worker (pings) and asks it a real DNS query too
(`egress.gateway.workers.DnsWorkerSlot`): its death or silence is a component's, the lockdown while it restarts.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from egress import logbuffer
from egress.decisions import FanoutReporter, LogReporter
from egress.dnsserver.bindings import Bindings
from egress.dnsserver.listen import serve as listen
from egress.dnsserver.resolver import Resolver, Upstream
from egress.gateway.allowsets import AllowSetWriter
from egress.gateway.components import ProbeFilter, interface_address
from egress.gateway.config import DnsWorkerConfig
from egress.gateway.fdlimit import raise_fd_limit
from egress.gateway.qtap import FindingTap
from egress.gateway.recorder import RecordReporter
from egress.gateway.reload import PolicyVersion
from egress.gateway.worker import take_first_policy
from egress.logsetup import configure
from egress.parentage import die_with_parent
from egress.policy.lists import load_name_lists

log = logging.getLogger("egress.dnsserver")


class DnsWorker:
    """What one resolver process is made of, built under the first policy the supervisor sent."""

    def __init__(self, config: DnsWorkerConfig, version: PolicyVersion) -> None:
        policy = version.policy
        self.config = config
        self.recorder = RecordReporter(
            config.redis_url,
            config.gateway,
            config.spool_dir,
            config.name,
            retention=policy.retention,
            spool_max_bytes=config.spool_max_bytes,
            flow_log=policy.flow_log,
        )
        self.tap = FindingTap(config.findings_socket) if config.findings_socket else None
        taps = [self.tap] if self.tap is not None else []
        self.allow_sets = AllowSetWriter(config.table, policy)
        self.resolver = Resolver(
            policy,
            Upstream(config.upstream_dns),
            Bindings(config.bindings_path),
            ProbeFilter(FanoutReporter(LogReporter(), self.recorder, *taps)),
            load_name_lists(config.lists_dir),
            on_answer=self.allow_sets,
            listen_address=interface_address(config.sandbox_if),
            listen_port=config.port,
            flows=self.recorder,
        )

    def swap(self, version: PolicyVersion) -> None:
        """Commit: every query from now on is judged under ``version`` (the table before it was replaced first)."""
        self.allow_sets.reload(version.policy)
        self.resolver.reload(version.policy)

    def close(self) -> None:
        self.allow_sets.close()
        if self.tap is not None:
            self.tap.close()
        self.recorder.close()  # what it decided reaches Redis (or its spool) before it exits


async def serve(config: DnsWorkerConfig, control_fd: int) -> None:
    """Take the first policy from the supervisor, then answer DNS and follow its reloads until either ends."""
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
    worker = DnsWorker(config, started.policy)
    control.on_commit = worker.swap
    control.stats = lambda: worker.recorder.snapshot().to_json()
    handles: list[object] = []
    try:
        # Listening only once built and under the policy in force: a query before that finds no socket (dropped).
        handles = await listen(worker.resolver, ["0.0.0.0", "::"], config.port)
        log.info("%s: resolver on port %d, upstream %s", config.name, config.port, config.upstream_dns)
        follow = asyncio.create_task(control.serve(reader, writer))
        await asyncio.wait({follow, stopped}, return_when=asyncio.FIRST_COMPLETED)
        for task in (follow, stopped):
            task.cancel()
        await asyncio.gather(follow, stopped, return_exceptions=True)
        if not stop.is_set():
            log.warning("%s: the supervisor closed the control channel: stopping", config.name)
    finally:
        for handle in handles:  # no query is taken that could not be recorded
            handle.close()  # type: ignore[attr-defined]
        worker.close()
        logbuffer.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m egress.gateway.dnsworker", description="egress resolver process")
    parser.add_argument("--config", required=True, help="resolver process configuration (JSON) written by the gateway")
    parser.add_argument(
        "--control", required=True, type=int, help="the inherited descriptor of the supervisor's control channel"
    )
    parser.add_argument("--parent", type=int, help="the supervisor's pid: the process dies with it")
    args = parser.parse_args(argv)
    configure("dns")
    if args.parent is not None:
        die_with_parent(args.parent)
    raise_fd_limit()
    asyncio.run(serve(DnsWorkerConfig.read(args.config), args.control))


if __name__ == "__main__":
    main()
