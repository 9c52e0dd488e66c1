"""What a proxy worker is made of, apart from mitmproxy: its gate (policy, bindings, detectors) and reporter."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from egress.detect.names import NameLists, make_name_detector
from egress.detect.registry import stream_detectors
from egress.gateway.attempt import FanoutReporter, LogReporter, Reporter
from egress.gateway.bindings import Bindings
from egress.gateway.config import WorkerConfig
from egress.gateway.recorder import RecordReporter
from egress.proxy.gate import Gate
from egress.rules.lists import load_lists_dir
from egress.rules.policy import load_policy
from egress.rules.yamlnodes import RulesError

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
    lists = NameLists(load_lists_dir(config.lists_dir))
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
