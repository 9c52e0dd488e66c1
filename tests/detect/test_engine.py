"""egress.detect.engine: a flow keeps its highest-ranked finding; `findings` also lists each other category's
first finding, which the scanner reports too."""

from __future__ import annotations

from egress.detect.base import MORE, Category, Detector, Finding, FlowView, Result
from egress.detect.engine import FlowInspector
from tests.detect.feeding import META

TUNNEL = Finding(Category.TUNNEL, "unknown-upgrade", "upgrade", "Upgrade: h2c")
MINING = Finding(Category.MINING, "stratum-v1", "stratum", "mining.submit")


def _when(marker: bytes, finding: Finding) -> Detector:
    def detect(view: FlowView) -> Result:
        return finding if marker in view.client else MORE

    return detect


def test_a_mining_finding_outranks_an_earlier_tunnel_one_and_both_are_listed() -> None:
    inspector = FlowInspector(META, (_when(b"UP", TUNNEL), _when(b"JOB", MINING)))
    inspector.feed_stream(True, b"UP ")
    assert list(inspector.findings) == [TUNNEL]
    inspector.feed_stream(True, b"JOB")
    both = inspector.findings
    assert inspector.done and inspector.finding == MINING and both == (MINING, TUNNEL)


def test_a_lower_finding_after_a_higher_one_is_listed_too() -> None:
    inspector = FlowInspector(META, (_when(b"JOB", MINING), _when(b"UP", TUNNEL)))
    inspector.feed_stream(True, b"UP JOB")
    assert inspector.finding == MINING and inspector.findings == (MINING,)  # mining ends the inspection at once


def test_no_finding_lists_nothing() -> None:
    inspector = FlowInspector(META, (_when(b"never", MINING),))
    inspector.feed_stream(True, b"hello")
    inspector.close()
    assert inspector.findings == ()
