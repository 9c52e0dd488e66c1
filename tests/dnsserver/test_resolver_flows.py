"""The resolver as a source of the flow log: an answered query of a sandbox with ``flow_log: true`` is one ended
flow (the query's and the answer's bytes, the rule that allowed the name); a refused one, or any query of a
sandbox without the switch, is none."""

from __future__ import annotations

import asyncio
import pathlib

from egress.detect import dns
from egress.detect.names import NameLists
from egress.dnsserver.bindings import Bindings
from egress.dnsserver.resolver import Upstream
from egress.flowlog import EndedFlow
from egress.policy.loader import parse_policy
from tests.dnsserver.test_resolver import POLICY, SANDBOX, FakeUpstream, Recorded

LOGGED = POLICY.replace("    mode: enforce\n", "    mode: enforce\n    flow_log: true\n", 1)


class Sink:
    def __init__(self) -> None:
        self.ended: list[EndedFlow] = []

    def flow_ended(self, flow: EndedFlow) -> None:
        self.ended.append(flow)


def _resolver(policy: str, tmp_path: pathlib.Path, sink: Sink) -> tuple[FakeUpstream, Bindings]:
    bindings = Bindings(tmp_path / "bindings.db")
    core = FakeUpstream(parse_policy(policy), Upstream("192.0.2.53"), bindings, Recorded(), NameLists([]), flows=sink)
    core.forwarded = []
    core.upstream_answer = [dns.Record(dns.name_labels("allowed.lab"), dns.A, 60, bytes([93, 184, 216, 34]))]
    return core, bindings


def test_an_answered_query_is_one_flow_with_its_bytes_and_rule(tmp_path: pathlib.Path) -> None:
    sink = Sink()
    core, bindings = _resolver(LOGGED, tmp_path, sink)
    query = dns.build_query(7, "allowed.lab", dns.A)
    answer = asyncio.run(core.answer(query, SANDBOX, "udp"))
    asyncio.run(core.answer(dns.build_query(8, "blocked.lab", dns.A), SANDBOX, "udp"))  # refused: no flow
    bindings.close()
    assert answer is not None
    [flow] = sink.ended
    assert (flow.sandbox, flow.src, flow.sport, flow.dport, flow.transport) == ("agent", *SANDBOX, 53, "udp")
    assert (flow.host, flow.rule, flow.action) == ("allowed.lab", "sandboxes.agent.allow.hosts[0]", "allow")
    assert (flow.up, flow.down) == (len(query), len(answer)) and flow.ended >= flow.started


def test_without_the_switch_no_flow_is_described(tmp_path: pathlib.Path) -> None:
    sink = Sink()
    core, bindings = _resolver(POLICY, tmp_path, sink)
    asyncio.run(core.answer(dns.build_query(7, "allowed.lab", dns.A), SANDBOX, "udp"))
    bindings.close()
    assert sink.ended == [] and len(core.forwarded) == 1
