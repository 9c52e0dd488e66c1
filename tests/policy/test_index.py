"""egress.policy.index: the indexed lookups of a sandbox's rules answer what a scan of the rules in file order
answers (the scans below are the model's lookups as they were), and a pickled sandbox comes back equal."""

from __future__ import annotations

import dataclasses
import ipaddress
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress.policy import model
from egress.policy.loader import parse_policy
from egress.policy.model import RULES_PER_CHUNK, Address, HostRule, NetworkRule, Sandbox
from tests.budget import examples

LABELS = ["a", "b", "example", "com", "x-y"]
_names = st.lists(st.sampled_from(LABELS), min_size=1, max_size=4).map(".".join)
_host_rules = st.builds(
    lambda wildcard, name, ports, line: HostRule(("*." if wildcard else "") + name, ports, f"r{line}", line),
    st.booleans(), _names, st.frozensets(st.sampled_from([80, 443, 8443]), max_size=2), st.integers(0, 10**6),
)  # fmt: skip
_networks = st.builds(
    lambda v4, value, length: ipaddress.ip_network((value, length), strict=False)
    if v4
    else ipaddress.ip_network(((0xFD << 120) | value, 96 + length), strict=False),
    st.booleans(), st.integers(0, 2**32 - 1), st.integers(0, 32),
)  # fmt: skip
_network_rules = st.builds(
    lambda network, ports, protocols, line: NetworkRule(network, ports, protocols, f"n{line}", line),
    _networks, st.frozensets(st.sampled_from([53, 443, 5432]), max_size=2),
    st.frozensets(st.sampled_from(["tcp", "udp"]), min_size=1), st.integers(0, 10**6),
)  # fmt: skip


def _sandbox(hosts: list[HostRule], networks: list[NetworkRule]) -> Sandbox:
    base = parse_policy("version: 1\nsandboxes:\n  s:\n    sources: [10.0.0.0/8]\n").sandboxes[0]
    return dataclasses.replace(base, hosts=tuple(hosts), networks=tuple(networks))


def _scan_host(sandbox: Sandbox, name: str, port: int | None) -> HostRule | None:
    for rule in sandbox.hosts:
        covers = (rule.pattern.startswith("*.") and name.endswith(rule.pattern[1:])) or rule.pattern == name
        if covers and (port is None or not rule.ports or port in rule.ports):
            return rule
    return None


def _scan_network(sandbox: Sandbox, address: Address, port: int, protocol: str) -> NetworkRule | None:
    for rule in sandbox.networks:
        if address in rule.network and (not rule.ports or port in rule.ports) and protocol in rule.protocols:
            return rule
    return None


@settings(max_examples=examples(300), deadline=None)
@given(
    st.lists(_host_rules, max_size=12),
    st.lists(st.one_of(_names, _names.map(lambda n: "." + n), st.just("")), max_size=8),
    st.sampled_from([None, 80, 443, 22]),
)
def test_host_lookups_answer_what_the_scan_answers(hosts: list[HostRule], names: list[str], port: int | None) -> None:
    sandbox = _sandbox(hosts, [])
    for name in names + [rule.pattern.removeprefix("*.") for rule in hosts] + ["q." + r.pattern[2:] for r in hosts]:
        assert sandbox.name_allowed(name) is _scan_host(sandbox, name, None)
        if port is not None:
            assert sandbox.host_rule(name, port) is _scan_host(sandbox, name, port)


@settings(max_examples=examples(300), deadline=None)
@given(
    st.lists(_network_rules, max_size=12),
    st.lists(_networks, max_size=6),
    st.sampled_from([53, 443, 5432, 1]),
    st.sampled_from(["tcp", "udp"]),
)
def test_network_lookups_answer_what_the_scan_answers(
    rules: list[NetworkRule], probes: list[ipaddress.IPv4Network | ipaddress.IPv6Network], port: int, protocol: str
) -> None:
    sandbox = _sandbox([], rules)
    addresses: list[Address] = [net.network_address for net in probes + [r.network for r in rules]]
    addresses += [net.broadcast_address for net in probes + [r.network for r in rules]]
    for address in addresses:
        assert sandbox.network_rule(address, port, protocol) is _scan_network(sandbox, address, port, protocol)


def test_a_pickled_sandbox_comes_back_equal_and_answers_alike() -> None:
    policy = parse_policy("""\
version: 1
sandboxes:
  s:
    sources: [10.0.0.0/8]
    allow:
      hosts: [pypi.org, "*.example.com:443", {host: a.example.org, ports: [80, 443], answers: [192.0.2.0/24]}]
      networks: [{cidr: 198.51.100.0/24, ports: [53], protocols: [udp]}]
    quarantine: {after: 2, within: 60}
    link_pins_sources: true
  empty:
    sources: [172.16.0.0/16]
    link_pins_sources: true
    max_connections: 64
""", "p.yaml")  # fmt: skip
    policy.sandboxes[0].host_rule("pypi.org", 443)  # an index built before pickling is not carried
    copy = pickle.loads(pickle.dumps(policy, pickle.HIGHEST_PROTOCOL))
    assert copy == policy
    assert copy.sandboxes[0].hosts[2].answers == policy.sandboxes[0].hosts[2].answers
    assert copy.sandboxes[0]._index is None
    assert copy.sandboxes[0].host_rule("b.example.com", 443) == policy.sandboxes[0].hosts[1]
    assert copy.sandboxes[1].hosts == () and copy.sandboxes[1].networks == ()


@pytest.mark.parametrize("count", [0, 1, RULES_PER_CHUNK - 1, RULES_PER_CHUNK, 2 * RULES_PER_CHUNK + 1])
def test_a_sandbox_unpickles_its_rules_chunk_by_chunk(count: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each chunk is rebuilt by a call into Python, where a thread waiting for the interpreter lock (the
    supervisor's resolver) gets it; one C loop over 100,000 rules held it ~100 ms (issue 12)."""
    hosts = tuple(HostRule(f"h{i}.example.org", frozenset({443}), f"r{i}", i) for i in range(count))
    networks = (NetworkRule(ipaddress.ip_network("192.0.2.0/24"), frozenset(), frozenset({"tcp"}), "n0", 1),)
    sandbox = _sandbox(list(hosts), list(networks))
    calls: list[int] = []
    rebuild = model._rules

    def counted(kind: type[object], columns: tuple[tuple[object, ...], ...]) -> tuple[object, ...]:
        calls.append(len(columns[0]))
        return rebuild(kind, columns)

    body = pickle.dumps(sandbox, pickle.HIGHEST_PROTOCOL)
    monkeypatch.setattr(model, "_rules", counted)
    copy = pickle.loads(body)
    assert copy == sandbox
    assert max(calls) <= RULES_PER_CHUNK
    assert len(calls) == -(-count // RULES_PER_CHUNK) + 1  # the hosts' chunks and the one network's
