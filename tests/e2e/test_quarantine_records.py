"""What a quarantined sandbox sends is recorded (issue 12), in the lab with the whole gateway: after the quarantine
(three mining findings), a flood of UDP datagrams from the sandbox to one destination is dropped by the cut-off
and shows in the records as that destination's attempts, blocked by the sandbox's quarantine rule, aggregated
(a few records, not one per packet) with counts that add up to exactly the datagrams sent."""

from __future__ import annotations

import json
import os
import pathlib
import socket
import sys
from collections.abc import Iterator

import pytest

from egress.capture.nflog import in_netns
from egress.lab import netns
from egress.lab.demo import GatewayRun, running_gateway
from egress.lab.topology import TUNNEL_V4
from egress.record.schema import AttemptRecord
from tests.waiting import eventually, scaled

pytestmark = [pytest.mark.e2e, pytest.mark.root]

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAB_POLICY = ROOT / "rules" / "lab-policy.yaml"
FLOOD = 300
"""Datagrams sent while cut off: more than the per-key log burst (20), so most are counted, not logged."""
PORT = 5003


@pytest.fixture
def lab(tmp_path: pathlib.Path) -> Iterator[GatewayRun]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(LAB_POLICY.read_text() + "    quarantine: {after: 3, within: 600, categories: [mining]}\n")
    with running_gateway(f"eqd{os.getpid() % 100000}-", policy, ready_timeout=scaled(300)) as run:
        yield run


def _records(run: GatewayRun) -> list[AttemptRecord]:
    argv = [sys.executable, "-m", "egress", "events", "--json", "--limit", "10000", "--redis-url", run.redis_url]
    done = netns.exec_in(run.lab.gateway_ns, argv, timeout=scaled(30))
    return [AttemptRecord.from_json(json.loads(line)) for line in done.stdout.splitlines() if line]


def _quarantined(run: GatewayRun) -> bool:
    argv = [sys.executable, "-m", "egress", "quarantine", "list", "--json", "--redis-url", run.redis_url]
    return bool(netns.exec_in(run.lab.gateway_ns, argv, timeout=scaled(30)).stdout.strip())


def test_a_quarantined_sandbox_s_packets_are_recorded_aggregated_with_exact_counts(lab: GatewayRun) -> None:
    results = lab.attempts(["stratum_3333"] * 3)
    assert [r.outcome for r in results] == ["blocked"] * 3, results
    eventually(lambda: _quarantined(lab), timeout=60)

    sock = in_netns(lab.lab.sandbox_ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
    try:
        for index in range(FLOOD):
            sock.sendto(f"cut off {index}".encode(), (TUNNEL_V4, PORT))
    finally:
        sock.close()

    def flood_records() -> list[AttemptRecord]:
        found = [r for r in _records(lab) if r.dst == TUNNEL_V4 and r.transport == "udp"]
        assert sum(r.count for r in found) == FLOOD, [(r.count, r.rule) for r in found]
        return found

    found = eventually(flood_records, timeout=120, interval=1.0)
    assert {(r.sandbox, r.rule, r.action) for r in found} == {("agent", "sandboxes.agent.quarantine", "block")}
    assert len(found) < FLOOD // 10, len(found)  # aggregated, not one record per packet
