"""egress.policy.pieces: a policy split into pieces and rebuilt a piece at a time is the policy, its lookups built
and answering as the policy's own."""

from __future__ import annotations

import ipaddress

import pytest

from egress.policy.loader import parse_policy
from egress.policy.pieces import RULES_PER_PIECE, Pieces, rebuild, split

POLICY = """\
version: 1
sandboxes:
  big:
    sources: [10.0.0.0/8]
    allow:
      hosts: [{hosts}"*.example.com:443", {{host: a.example.org, ports: [80, 443], answers: [192.0.2.0/24]}}]
      networks: [{{cidr: 198.51.100.0/24, ports: [53], protocols: [udp]}}, {{cidr: 203.0.113.0/24}}]
    quarantine: {{after: 2, within: 60}}
  empty:
    sources: [172.16.0.0/16]
    interface: sbx1
"""


def _policy(count: int) -> str:
    return POLICY.format(hosts="".join(f"h{index}.bench.example.org, " for index in range(count)))


@pytest.mark.parametrize("count", [0, 1, RULES_PER_PIECE, RULES_PER_PIECE * 2 + 5])
def test_a_policy_rebuilt_from_its_pieces_is_the_policy_with_its_lookups_built(count: int) -> None:
    policy = parse_policy(_policy(count), "p.yaml")
    steps = list(rebuild(split(policy)))
    rebuilt = steps[-1]
    assert rebuilt == policy
    assert steps[:-1] == [None] * (len(steps) - 1)
    assert len(steps) - 1 == -(-(count + 2) // RULES_PER_PIECE) + 1  # the host pieces, then the one network piece
    big = rebuilt.sandboxes[0]
    assert big._index is not None and rebuilt.sandboxes[1]._index is not None  # built: nothing left for the loop
    for name, port in [
        ("h0.bench.example.org", 443),
        (f"h{max(count - 1, 0)}.bench.example.org", 80),
        ("x.example.com", 443),
        ("x.example.com", 80),
        ("a.example.org", 80),
        ("other.org", 443),
    ]:
        assert big.host_rule(name, port) == policy.sandboxes[0].host_rule(name, port)
    for address, port, protocol in [
        ("198.51.100.7", 53, "udp"),
        ("198.51.100.7", 53, "tcp"),
        ("203.0.113.9", 1, "tcp"),
    ]:
        expected = policy.sandboxes[0].network_rule(ipaddress.ip_address(address), port, protocol)
        assert big.network_rule(ipaddress.ip_address(address), port, protocol) == expected


def test_pieces_that_do_not_fit_together_are_refused() -> None:
    pieces = split(parse_policy(_policy(3), "p.yaml"))
    with pytest.raises(ValueError, match="do not fit"):
        list(rebuild(Pieces(pieces.skeleton, pieces.hosts[:1], pieces.networks)))
