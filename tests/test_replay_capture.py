"""egress.replay_capture: the questions the gateway would be asked about the flows of the captures in pcaps/."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest

from egress.detect.registry import DetectorSet, build_detectors
from egress.replay import Kind
from egress.replay_capture import capture_questions
from tests.lists import shipped_lists

PCAPS = Path(__file__).resolve().parents[1] / "pcaps"


@cache
def _detectors() -> DetectorSet:
    """Built on first use, not at import: every xdist worker imports every test module to collect it."""
    return build_detectors(shipped_lists())


@pytest.mark.parametrize(
    ("capture", "expected"),
    [
        # the name was resolved through the capture's DNS to the address the connection went to: bound
        ("allowed_download", [(Kind.DNS, "allowed.lab", None), (Kind.TLS, "allowed.lab", True)]),
        ("websocket", [(Kind.DNS, "ws.lab", None), (Kind.HTTP, "ws.lab", True)]),
        # an allowed name sent to another address: not bound
        ("sni_spoof", [(Kind.TLS, "allowed.lab", False)]),
        ("host_spoof", [(Kind.HTTP, "allowed.lab", False)]),
        ("direct_ip", [(Kind.TLS, None, False)]),
        ("disallowed_site", [(Kind.DNS, "blocked.lab", None)]),
        ("stratum_3333", [(Kind.DNS, "pool.lab", None), (Kind.RAW, None, None), (Kind.FINDING, None, None)]),
    ],
)
def test_each_flow_becomes_the_question_the_gateway_asks(
    capture: str, expected: list[tuple[Kind, str | None, bool | None]]
) -> None:
    questions, summary = capture_questions(str(PCAPS / f"{capture}.pcap"), _detectors())
    assert summary.error is None
    assert [(item.question.kind, item.question.name, item.question.bound) for item in questions] == expected


def test_a_dns_finding_goes_with_its_question() -> None:
    questions, _ = capture_questions(str(PCAPS / "dns_tunnel.pcap"), _detectors())
    (item,) = questions
    assert item.question.kind is Kind.DNS and item.question.name is not None
    assert item.question.name.endswith(".t.lab")
    assert item.question.finding is not None and item.question.finding.protocol == "dns-exfiltration"


def test_what_the_firewall_decides_is_counted_not_replayed() -> None:
    questions, summary = capture_questions(str(PCAPS / "icmp_tunnel.pcap"), _detectors())
    assert questions == [] and summary.firewall > 0
