"""`egress.nft.counting.keeping`: a whole-table script rewritten to keep the counting state (pure)."""

from __future__ import annotations

import pytest

from egress.nft import counting
from egress.nft.render import GatewaySettings, render, render_lockdown
from egress.policy.model import Policy
from tests.nft import make_sandbox

SETTINGS = GatewaySettings(sandbox_if="sbx0", uplink_if="up0")
POLICY = Policy(1, (make_sandbox("agents", "10.77.0.0/26", "fd77::/120"),))
HAS = ({"count_drop", "count_pass", "forward", "forward_gone"}, {*counting.KEPT_SETS, "src4_agents", "src4_gone"})


def test_everything_but_the_counting_state_is_emptied_or_deleted_then_declared_anew() -> None:
    kept = counting.keeping(render(POLICY, SETTINGS), "egress", *HAS)
    assert kept is not None
    assert "delete table" not in kept
    assert "flush chain inet egress forward_gone\n" in kept and "delete chain inet egress forward_gone\n" in kept
    assert "delete set inet egress src4_gone\n" in kept
    assert "count_drop" not in kept.split("delete set")[0]  # the counting chains are neither flushed nor deleted
    assert "set counting" not in kept and "set drops4a" not in kept  # nor declared again (their elements stay)
    assert "chain count_drop {" not in kept and "jump count_drop" in kept
    assert "flush chain inet egress forward\n" in kept and "delete chain inet egress forward\n" not in kept
    assert "flush set inet egress src4_agents\n" in kept and "delete set inet egress src4_agents\n" not in kept
    assert kept.index("delete set inet egress src4_gone") < kept.index("table inet egress {")


def test_the_lockdown_keeps_the_counting_state_too() -> None:
    kept = counting.keeping(render_lockdown(SETTINGS, POLICY), "egress", *HAS)
    assert kept is not None and "delete set inet egress src4_gone" in kept and "drops4a" not in kept


@pytest.mark.parametrize("missing", sorted(counting.KEPT_SETS | counting.KEPT_CHAINS))
def test_a_table_without_all_of_the_counting_state_is_replaced_whole(missing: str) -> None:
    chains, sets = HAS
    assert counting.keeping(render(POLICY, SETTINGS), "egress", chains - {missing}, sets - {missing}) is None


def test_a_script_that_is_not_a_whole_table_is_refused() -> None:
    with pytest.raises(ValueError, match="not a whole-table script"):
        counting.keeping("flush set inet egress quarantine4\n", "egress", *HAS)
