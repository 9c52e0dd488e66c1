"""`egress.nft.render`'s guards of red team 10b: destinations that are this host by another name, and a sandbox's
source arriving on another interface (the uplink)."""

from __future__ import annotations

import re

import pytest

from egress.nft.render import GatewaySettings, render
from egress.policy.model import Mode, Policy
from tests.nft import make_sandbox

SETTINGS = GatewaySettings(sandbox_if="sbx0", uplink_if="up0")


def _chain(text: str, name: str) -> list[str]:
    found = re.search(rf"\tchain {name} {{\n(.*?)\n\t}}", text, re.S)
    assert found, name
    return [line.strip() for line in found.group(1).splitlines()]


@pytest.mark.parametrize("mode", [Mode.ENFORCE, Mode.REPORT])
def test_this_host_by_another_name_is_dropped_first_in_every_mode(mode: Mode) -> None:
    policy = Policy(1, (make_sandbox("agents", "10.10.0.0/24", "fd10::/64", mode=mode),), file="p.yaml")
    rules = _chain(render(policy, SETTINGS), "sandbox_sources")
    first_return = next(i for i, line in enumerate(rules) if line.endswith(" return"))
    before = rules[:first_return]
    v4 = "ip daddr { 0.0.0.0/8, 127.0.0.0/8 } drop"
    v6 = "ip6 daddr { ::/128, ::1/128, ::ffff:0:0/96 } drop"
    assert v4 in before and v6 in before, rules[:first_return]
    assert any(line.startswith("ip daddr { 0.0.0.0/8") and 'log prefix "egress guard"' in line for line in before)
    assert any(line.startswith("ip6 daddr { ::/128") and 'log prefix "egress guard"' in line for line in before)


def test_a_sandbox_source_on_another_interface_is_dropped_as_spoofed() -> None:
    policy = Policy(
        1,
        (make_sandbox("agents", "10.10.0.0/24", "fd10::/64"), make_sandbox("ci", "10.20.0.0/24", interface="sbx1")),
        file="p.yaml",
    )
    rules = _chain(render(policy, SETTINGS), "prerouting")
    jump = rules.index('iifname { "sbx0", "sbx1" } jump sandbox_sources')
    for iif, src in (("sbx0", "@src4_agents"), ("sbx0", "@src6_agents"), ("sbx1", "@src4_ci"), ("sbx1", "@src6_ci")):
        fam = "ip" if "src4" in src else "ip6"
        drop = rules.index(f'iifname != {{ "lo", "{iif}" }} {fam} saddr {src} drop')
        assert drop < jump
        logged = f'iifname != {{ "lo", "{iif}" }} {fam} saddr {src} limit rate 50/second burst 100 packets'
        assert f'{logged} log prefix "egress spoof" group 7' in rules
