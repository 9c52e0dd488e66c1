"""The harness's own proof: a positive control that must get through (allowed bytes counted, not a leak) and one
blocked attempt judged the way every technique is (internet-side capture, the client's own view, the record)."""

from __future__ import annotations

import pathlib
import time

import pytest

from egress.lab.topology import PACKAGE_SIZE, server
from tests.security.conftest import LabFactory
from tests.security.harness import ROOT, SecurityLab, report

LAB_POLICY = ROOT / "rules" / "lab-policy.yaml"

pytestmark = pytest.mark.security

ALLOWED = server("allowed").v4
POOL = server("pool").v4


def test_control_an_allowed_download_reaches_allowed_lab(security_lab: SecurityLab) -> None:
    with security_lab.capture("control") as capture:
        [result] = security_lab.attempts(["allowed_download"])
    crossed = capture.result
    assert crossed is not None
    # the request crosses (the response is the big part, inbound); any outbound byte to allowed.lab proves the path
    allowed_bytes = crossed.bytes_to(ALLOWED, 80, "tcp") + crossed.bytes_to(ALLOWED, 443, "tcp")
    report("control/allowed-download", "control", allowed_bytes, result.outcome == "ok", None, "allowed, not a leak")
    assert result.outcome == "ok", result
    assert allowed_bytes > 0, crossed.table()
    assert f"{PACKAGE_SIZE} bytes" in result.detail, result.detail


def test_stratum_on_3333_to_the_pool_leaks_nothing(security_lab: SecurityLab) -> None:
    since = time.time()
    with security_lab.capture("stratum") as capture:
        [result] = security_lab.attempts(["stratum_3333"])
    crossed = capture.result
    assert crossed is not None
    leaked = crossed.bytes_to(POOL, proto="tcp")
    goal = result.outcome == "ok"
    reason = security_lab.reason_of(since, lambda r: r.dst == POOL and r.dport == 3333)
    report("stratum/plain-3333", "mining", leaked, goal, reason)
    assert leaked == 0, crossed.table()
    assert not crossed.contains(b"mining.subscribe")
    assert not goal, result
    assert reason == "mining"


def test_the_capture_sees_a_leak_when_the_gateway_lets_one_through(
    lab_factory: LabFactory, tmp_path: pathlib.Path
) -> None:
    """The harness can fail: under the same policy in report mode the pool gets the subscribe, and the capture
    counts it, marker and all (a harness that always says 0 would prove nothing)."""
    policy = tmp_path / "report.yaml"
    policy.write_text(LAB_POLICY.read_text().replace("mode: enforce", "mode: report"))
    lab = lab_factory(policy)
    with lab.capture("leak") as capture:
        [result] = lab.attempts(["stratum_3333"])
    crossed = capture.result
    assert crossed is not None
    leaked = crossed.bytes_to(POOL, 3333, "tcp")
    report("control/report-mode-stratum", "control", leaked, result.outcome == "ok", None, "must leak: report mode")
    assert result.outcome == "ok", result
    assert leaked > 0 and crossed.contains(b"mining.subscribe", POOL), crossed.table()
