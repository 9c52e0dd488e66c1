"""``egress lab record``'s core: an attempt played through the gateway becomes a small capture at the gateway's
sandbox side that holds what the agent sent (and the scanner finds it)."""

from __future__ import annotations

import pathlib

import pytest

from egress.detect.registry import build_detectors
from egress.lab.record import SNAPLEN, record_in
from egress.policy.lists import load_name_lists
from egress.scanner import FileStats, Scanner
from tests.security.harness import SecurityLab

pytestmark = pytest.mark.security


def test_an_attempt_is_recorded_at_the_sandbox_side(security_lab: SecurityLab, tmp_path: pathlib.Path) -> None:
    [done] = record_in(security_lab.run, ["stratum_3333"], tmp_path)
    assert done.path == tmp_path / "stratum_3333.pcap"
    assert done.result.outcome == "blocked", done.result
    stats = FileStats(str(done.path))
    found = {
        (f.finding.category.value, f.finding.protocol, f.meta.dport)
        for f in Scanner(build_detectors(load_name_lists(None))).scan(stats.path, stats)
    }
    assert ("mining", "stratum-v1", 3333) in found, found
    assert done.path.stat().st_size < 64 * SNAPLEN
    assert not done.path.with_suffix(".log").exists()
