"""Tests for egress.policy.addresses: which source networks a gateway can take (overlaps through IPv4-mapped IPv6,
catch-all sources, the gateway's own addresses, zone ids), and the loader refusing them at their lines."""

from __future__ import annotations

import ipaddress

import pytest

from egress.policy.addresses import Placed, as_ipv4, catch_all, gateway_problems, loopback, overlaps, zone_id
from egress.policy.loader import RulesError, parse_policy


def placed(*networks: str, sandbox: str = "a") -> list[Placed]:
    return [
        Placed(sandbox, ipaddress.ip_network(network), index + 1, f"sandboxes.{sandbox}.sources[{index}]")
        for index, network in enumerate(networks)
    ]


@pytest.mark.parametrize(
    ("network", "plain"),
    [("::ffff:10.0.0.0/104", "10.0.0.0/8"), ("::ffff:0:0/96", "0.0.0.0/0"), ("::ffff:192.0.2.1/128", "192.0.2.1/32"),
     ("fd00::/64", "fd00::/64"), ("10.0.0.0/8", "10.0.0.0/8"), ("::/0", "::/0")],
)  # fmt: skip
def test_ipv4_mapped_networks_are_their_ipv4_network(network: str, plain: str) -> None:
    assert as_ipv4(ipaddress.ip_network(network)) == ipaddress.ip_network(plain)


def test_catch_all_loopback_and_zone() -> None:
    assert all(catch_all(ipaddress.ip_network(n)) for n in ("0.0.0.0/0", "::/0", "::ffff:0:0/96"))
    assert not catch_all(ipaddress.ip_network("0.0.0.0/1"))
    assert loopback(ipaddress.ip_network("127.0.0.1/32")) and loopback(ipaddress.ip_network("::1/128"))
    assert loopback(ipaddress.ip_network("::ffff:127.0.0.0/104")) and not loopback(ipaddress.ip_network("0.0.0.0/0"))
    assert zone_id(ipaddress.ip_network("fe80::1%vlan42/128")) == "vlan42"
    assert zone_id(ipaddress.ip_network("fe80::1/128")) is None and zone_id(ipaddress.ip_network("10.0.0.0/8")) is None


@pytest.mark.parametrize(
    ("networks", "overlapping"),
    [
        (["10.0.0.0/8", "::ffff:10.0.0.0/104"], [1]),
        (["::ffff:10.1.0.0/112", "10.0.0.0/8"], [1]),
        (["10.0.0.0/24", "10.0.1.0/24", "fd00::/64"], []),
        (["10.0.0.0/16", "10.0.1.0/24", "10.0.2.0/24"], [1, 2]),
        (["10.0.0.0/24", "10.0.0.0/24"], [1]),
        (["fd00::/64", "fd00::1/128", "10.0.0.0/8"], [1]),
    ],
)
def test_every_overlapping_source_is_reported_at_the_later_one(networks: list[str], overlapping: list[int]) -> None:
    sources = placed(*networks)
    assert sorted({sources.index(at) for at, _ in overlaps(sources)}) == overlapping


def test_overlaps_against_brute_force() -> None:
    """Every network that overlaps an earlier one is reported, whatever the order (checked against all pairs)."""
    nets = ["10.0.0.0/8", "10.1.0.0/16", "10.2.0.0/16", "10.1.2.0/24", "11.0.0.0/8", "::ffff:11.1.0.0/112",
            "fd00::/8", "fd00:1::/32", "fe80::/10", "10.255.255.255/32"]  # fmt: skip
    for rotation in range(len(nets)):
        order = nets[rotation:] + nets[:rotation]
        sources = placed(*order)
        reported = {sources.index(at) for at, _ in overlaps(sources)}
        plain = [as_ipv4(p.network) for p in sources]
        expected = {
            later
            for later in range(len(plain))
            for earlier in range(later)
            if plain[later].version == plain[earlier].version and plain[later].overlaps(plain[earlier])
        }
        assert reported == expected, order


def test_gateway_addresses_are_refused_unless_a_confirmed_catch_all() -> None:
    gateway = [ipaddress.ip_address("192.0.2.1"), ipaddress.ip_address("2001:db8::1")]
    (inside,) = placed("192.0.2.0/24")
    assert gateway_problems(inside, gateway, False) == [
        "sandboxes.a.sources[0]: 192.0.2.0/24 contains 192.0.2.1, an address of the gateway (--gateway-address)"
    ]
    (mapped,) = placed("::ffff:192.0.2.0/120")
    assert len(gateway_problems(mapped, gateway, False)) == 1
    (elsewhere,) = placed("10.0.0.0/8")
    assert gateway_problems(elsewhere, gateway, False) == []
    (everything,) = placed("0.0.0.0/0")
    assert gateway_problems(everything, gateway, True) == [] and gateway_problems(everything, gateway, False)


POLICY = "version: 1\nsandboxes:\n  a:\n    sources: [{sources}]\n{extra}"


def problems(sources: str, extra: str = "", gateway: tuple[str, ...] = ()) -> list[str]:
    try:
        parse_policy(POLICY.format(sources=sources, extra=extra), "p.yaml", [ipaddress.ip_address(a) for a in gateway])
    except RulesError as error:
        return [str(problem) for problem in error.problems]
    return []


def test_the_loader_refuses_at_file_line_field() -> None:
    assert problems("'fe80::1%vlan42/128'")[0].startswith("p.yaml:4: sandboxes.a.sources[0]: 'fe80::1%vlan42/128': "
                                                         "an IPv6 zone id ('%vlan42') is not allowed")  # fmt: skip
    assert problems("0.0.0.0/0")[0].startswith("p.yaml:4: sandboxes.a.sources[0]: 0.0.0.0/0 makes every address")
    assert problems("0.0.0.0/0, '::/0'", "    any_source: true\n") == []
    assert problems("10.0.0.0/8", "    any_source: yes\n") == []
    assert problems("10.0.0.0/8", "    any_source: 'true'\n") == [
        "p.yaml:5: sandboxes.a.any_source: must be true or false, not a string"
    ]
    assert problems("192.0.2.0/24", gateway=("192.0.2.1",)) == [
        "p.yaml:4: sandboxes.a.sources[0]: 192.0.2.0/24 contains 192.0.2.1, an address of the gateway "
        "(--gateway-address)"
    ]
    assert problems("192.0.2.0/24") == [] and problems("10.0.0.0/8", gateway=("192.0.2.1",)) == []
    assert parse_policy(POLICY.format(sources="0.0.0.0/0", extra="    any_source: true\n")).sandboxes[0].any_source
