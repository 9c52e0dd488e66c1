"""The lab's frozen shape: names fit the kernel's limits, addresses are distinct, the zone answers what it should."""

from __future__ import annotations

import ipaddress
import zlib

import pytest

from egress.lab import topology
from egress.lab.topology import SERVERS, Lab

IFNAMSIZ = 16


@pytest.mark.parametrize("prefix", ["egress-", "egt-lab-", "a", "abcdefghijk-"])
def test_interface_names_fit_and_carry_the_prefix(prefix: str) -> None:
    lab = Lab(prefix)
    names = (lab.sandbox_if, lab.gateway_sandbox_if, lab.gateway_uplink_if, lab.internet_if)
    assert len(set(names)) == 4
    for name in names:
        assert len(name.encode()) < IFNAMSIZ
        assert name.startswith(lab.short)
    assert all(ns.startswith(prefix) for ns in lab.namespaces)
    assert lab.ca_file.parent == lab.state_dir and prefix in str(lab.state_dir)
    assert lab.sandbox_ns in str(lab.resolv_conf)


@pytest.mark.parametrize("prefix", ["", "Egress-", "1lab-", "egress lab", "much-too-long-prefix-", "a/b"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="lab prefix"):
        Lab(prefix)


def test_default_prefix_is_egress() -> None:
    assert Lab().sandbox_ns == "egress-sbx"
    assert Lab().gateway_sandbox_if == "egressgs"


def test_server_addresses_are_distinct_and_inside_the_lab_ranges() -> None:
    v4 = [s.v4 for s in SERVERS] + [topology.TUNNEL_V4]
    v6 = [s.v6 for s in SERVERS] + [topology.TUNNEL_V6]
    assert len(set(v4)) == len(v4) and len(set(v6)) == len(v6)
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network(topology.SERVERS_NET_V4) for a in v4)
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network(topology.SERVERS_NET_V6) for a in v6)
    assert len({s.name for s in SERVERS}) == len(SERVERS)
    assert all(s.name.endswith("." + topology.ZONE) for s in SERVERS)


def test_the_brief_addresses() -> None:
    assert topology.server("allowed").v4 == "198.18.10.1"
    assert topology.server("pool").tcp == (3333, 443, 4443)
    assert topology.server("ssh").v4 == "198.18.10.7"
    with pytest.raises(KeyError):
        topology.server("nope")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("allowed.lab", ("198.18.10.1", "2001:db8:10::1")),
        ("ALLOWED.lab.", ("198.18.10.1", "2001:db8:10::1")),
        ("abc.t.lab", (topology.TUNNEL_V4, topology.TUNNEL_V6)),
        ("t.lab", (topology.TUNNEL_V4, topology.TUNNEL_V6)),
        ("nope.lab", None),
        ("allowed.lab.example", None),
        ("xt.lab", None),
    ],
)
def test_address_records(name: str, expected: tuple[str, str] | None) -> None:
    assert topology.address_records(name) == expected


def test_package_is_deterministic_and_incompressible() -> None:

    first = topology.package_bytes()
    assert first == topology.package_bytes()
    assert len(first) == topology.PACKAGE_SIZE
    assert len(zlib.compress(first)) > 0.99 * len(first)
