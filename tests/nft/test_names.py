"""`egress.nft.names`: the names the ruleset shares with the resolver and the drop logger."""

from __future__ import annotations

import pytest

from egress.nft.names import (
    MAX_NAME,
    LogKind,
    allow_set,
    log_prefix,
    parse_prefix,
    set_id,
    source_set,
    uncounted,
)


def test_prefixes_round_trip() -> None:
    assert parse_prefix(log_prefix(LogKind.DROP, "ci runners")) == (LogKind.DROP, "ci_runners")
    assert parse_prefix(log_prefix(LogKind.SPOOF)) == (LogKind.SPOOF, None)
    assert parse_prefix("egress nonsense x") is None
    assert parse_prefix("IN=eth0") is None
    assert allow_set("ci runners", 6) == "allow6_ci_runners" == f"allow6_{set_id('ci runners')}"
    assert source_set("ci runners", 4) == "src4_ci_runners"


def test_a_packet_the_kernel_could_not_count_has_a_prefix_of_its_own() -> None:
    prefix = log_prefix(LogKind.REPORT, "n" * MAX_NAME, uncounted=True)
    assert parse_prefix(prefix) == (LogKind.REPORT, "n" * MAX_NAME) and uncounted(prefix)
    assert len(prefix) <= 127  # the kernel cuts a log prefix there
    assert parse_prefix(log_prefix(LogKind.GUARD, uncounted=True)) == (LogKind.GUARD, None)
    assert not uncounted(log_prefix(LogKind.DROP, "agents")) and not uncounted("egress-uncountedx drop")


@pytest.mark.parametrize("name", ["", "n" * (MAX_NAME + 1)])
def test_names_nftables_cannot_hold_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=f"1 to {MAX_NAME} characters"):
        set_id(name)
