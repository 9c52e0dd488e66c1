"""Tests of the nftables data plane; `make_sandbox` builds policy pieces without going through YAML."""

from __future__ import annotations

import ipaddress

from egress.policy.model import DetectorActions, DnsLimits, Mode, NetworkRule, Sandbox


def make_sandbox(
    name: str,
    *sources: str,
    mode: Mode = Mode.ENFORCE,
    networks: tuple[NetworkRule, ...] = (),
    interface: str | None = None,
) -> Sandbox:
    return Sandbox(
        name=name,
        sources=tuple(ipaddress.ip_network(s) for s in sources),
        interface=interface,
        mode=mode,
        hosts=(),
        networks=networks,
        decrypt=(),
        dns=DnsLimits(),
        detectors=DetectorActions(),
        line=1,
    )


def udp_rule(sandbox: str, index: int, network: str, *ports: int, protocols: tuple[str, ...] = ("udp",)) -> NetworkRule:
    return NetworkRule(
        network=ipaddress.ip_network(network),
        ports=frozenset(ports),
        protocols=frozenset(protocols),
        rule_id=f"sandboxes.{sandbox}.allow.networks[{index}]",
        line=10 + index,
    )
