"""`egress.gateway.qcount`: which decisions count, the sliding window (an injected clock), and the trip."""

from __future__ import annotations

import dataclasses

import pytest

from egress.decide import Enforcement, Reason, Verdict
from egress.decisions import DecidedFlow
from egress.detect.base import Category, Finding
from egress.gateway.qcount import MAX_HELD, Window, category_of, reason, rule_for, trips
from egress.policy.model import Mode, Quarantine
from tests.nft import make_sandbox

RULE = Quarantine(after=3, within=60, categories=frozenset({"mining", "tunnel"}))


def _flow(
    action: Enforcement, reason: Reason | None, category: Category | None = None, sandbox: str = "a"
) -> DecidedFlow:
    finding = Finding(category, "stratum-v1", "stratum", "mining.subscribe") if category is not None else None
    verdict = Verdict(action, reason, "rule", "evidence", finding)
    return DecidedFlow(1.0, sandbox, "10.0.0.2", 4000, "198.18.10.3", 3333, "tcp", "", verdict)


@pytest.mark.parametrize(
    ("action", "why", "category", "counted"),
    [
        (Enforcement.BLOCK, Reason.MINING, Category.MINING, "mining"),
        (Enforcement.RECORD, Reason.TUNNEL, Category.TUNNEL, "tunnel"),
        (Enforcement.WOULD_BLOCK, Reason.CRYPTO_NODE, Category.CRYPTO_NODE, "crypto-node"),
        (Enforcement.BLOCK, Reason.DNS_TUNNEL, None, "tunnel"),  # a name too long: no finding, still a tunnel
        (Enforcement.ALLOW, None, Category.MINING, None),  # the detector is set to allow for this sandbox
        (Enforcement.BLOCK, Reason.NOT_ALLOWLISTED, None, None),  # a policy block is no finding
        (Enforcement.BLOCK, Reason.FIREWALL_DROP, None, None),
    ],
)
def test_which_decisions_count(
    action: Enforcement, why: Reason | None, category: Category | None, counted: str | None
) -> None:
    assert category_of(_flow(action, why, category)) == counted


def test_a_source_outside_every_sandbox_counts_for_none() -> None:
    assert category_of(_flow(Enforcement.BLOCK, Reason.MINING, Category.MINING, sandbox="")) is None


def test_the_rule_applies_to_its_categories_in_enforce_mode_only() -> None:
    sandbox = dataclasses.replace(make_sandbox("a", "10.0.0.0/24"), quarantine=RULE)
    assert rule_for(sandbox, "mining") is RULE and rule_for(sandbox, "tunnel") is RULE
    assert rule_for(sandbox, "crypto-node") is None
    assert rule_for(dataclasses.replace(sandbox, mode=Mode.REPORT), "mining") is None
    assert rule_for(make_sandbox("b", "10.1.0.0/24"), "mining") is None
    assert rule_for(None, "mining") is None


def test_the_window_slides_with_the_clock() -> None:
    window = Window()
    assert window.add("a", 100.0, 60) == 1
    assert window.add("a", 130.0, 60) == 2
    assert window.add("b", 130.0, 60) == 1  # each sandbox its own
    assert window.count("a", 159.9, 60) == 2
    assert window.count("a", 160.0, 60) == 1  # the first is exactly 60 s old: out
    assert window.add("a", 190.0, 60, count=4) == 4  # the second went out at 190 too
    assert window.count("a", 1000.0, 60) == 0


def test_a_release_clears_the_count_and_a_flood_stays_bounded() -> None:
    window = Window()
    assert window.add("a", 1.0, 60, count=MAX_HELD * 3) == MAX_HELD
    window.clear("a")
    assert window.count("a", 1.0, 60) == 0


def test_either_count_trips_so_a_silent_redis_still_quarantines() -> None:
    assert not trips(RULE, 2, 2)
    assert trips(RULE, 3, None)  # Redis did not answer: this gateway's own count decides
    assert trips(RULE, 1, 3)  # the other gateways' findings count too
    assert trips(RULE, 3, 1)  # Redis lost some (a restart): the local count still decides
    assert "3 findings (mining, tunnel) within 60 s" in reason(RULE, 3)
