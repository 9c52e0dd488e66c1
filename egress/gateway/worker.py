"""A proxy worker process: ``python -m egress.gateway.worker --config FILE`` (the supervisor starts one per core).

Builds what a worker is made of apart from mitmproxy (its gate: policy, bindings, detectors; its reporter) and
runs it with `egress.proxy.addon.run_worker`. ``--make-ca CONFDIR`` only makes the gateway's CA.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import dataclass

from egress.decisions import FanoutReporter, LogReporter, Reporter
from egress.detect.names import make_name_detector
from egress.detect.registry import stream_detectors
from egress.dnsserver.bindings import Bindings
from egress.gateway.config import WorkerConfig
from egress.gateway.recorder import RecordReporter
from egress.policy.lists import load_name_lists
from egress.policy.loader import load_policy
from egress.policy.yamlnodes import RulesError
from egress.proxy.addon import ensure_ca, run_worker
from egress.proxy.gate import Gate

log = logging.getLogger("egress.proxy")


@dataclass(frozen=True, slots=True)
class WorkerSetup:
    gate: Gate
    reporter: Reporter
    port: int
    confdir: str
    upstream_ca: str | None
    policy_path: str

    def reload(self) -> None:
        """Swap in the policy file's current content; a file that does not validate leaves the old one."""
        try:
            self.gate.policy = load_policy(self.policy_path)
        except RulesError as exc:
            log.error("policy reload rejected, the running policy stays in force:\n%s", exc)
            return
        log.info("policy reloaded from %s", self.policy_path)


def build_worker(config_path: str) -> WorkerSetup:
    worker = WorkerConfig.read(config_path)
    config = worker.gateway
    policy = load_policy(config.policy)
    lists = load_name_lists(config.lists_dir)
    bindings = Bindings(config.bindings_path)
    gate = Gate(policy, bindings.names_for, make_name_detector(lists), stream_detectors(lists))
    recorder = RecordReporter(config, component=f"proxy-{worker.index}", retention=policy.retention)
    return WorkerSetup(
        gate=gate,
        reporter=FanoutReporter(LogReporter(), recorder),
        port=worker.port,
        confdir=config.confdir,
        upstream_ca=config.upstream_ca,
        policy_path=config.policy,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m egress.gateway.worker", description="egress proxy worker")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--config", help="worker configuration (JSON) written by the gateway")
    what.add_argument("--make-ca", metavar="CONFDIR", help="only make the gateway's CA in CONFDIR if it is missing")
    args = parser.parse_args(argv)
    if args.make_ca:
        ensure_ca(args.make_ca)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s proxy[%(process)d] %(message)s")
    logging.getLogger("mitmproxy").setLevel(logging.WARNING)  # one line per connection is the decision log's job
    setup = build_worker(args.config)
    asyncio.run(run_worker(setup.gate, setup.reporter, setup.port, setup.confdir, setup.upstream_ca, setup.reload))


if __name__ == "__main__":
    main()
