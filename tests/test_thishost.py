"""`egress.thishost`: the gateway itself by any name is never dialled (the gate, every mode) nor bound from an
answer (the resolver), whatever the policy says (red team 10b)."""

from __future__ import annotations

import ipaddress
import pathlib

import pytest

from egress.decide import Enforcement, Reason
from egress.detect import dns
from egress.detect.names import make_name_detector
from egress.detect.registry import stream_detectors
from egress.dnsserver import answers
from egress.policy.loader import parse_policy
from egress.policy.model import Policy
from egress.proxy.gate import Gate
from egress.thishost import FIB_TRIE, GATEWAY_GUARD, IF_INET6, REFRESH_S, OwnAddresses, read_fib_trie, refusal
from tests.lists import shipped_lists

CATCH_ALL = """
version: 1
sandboxes:
  box:
    sources: [10.0.0.0/24, fd00::/64]
    mode: {mode}
    dns:
      allow_ranges: [0.0.0.0/0, "::/0"]
    allow:
      hosts:
        - {{host: "*.wild.test", ports: [443], answers: [0.0.0.0/0, "::/0"]}}
      networks:
        - {{cidr: 0.0.0.0/0, ports: [443, 6379], protocols: [tcp]}}
        - {{cidr: "::/0", ports: [443, 6379], protocols: [tcp]}}
"""
THIS_HOST = ["0.0.0.0", "0.1.2.3", "127.0.0.1", "127.9.9.9", "::", "::1", "::ffff:127.0.0.1", "::ffff:0.0.0.0",
             "::ffff:10.0.0.1", "::127.0.0.1", "169.254.169.254", "fe80::1", "255.255.255.255", "224.0.0.1", "ff02::1",
             "[::ffff:127.0.0.1]"]  # fmt: skip
ELSEWHERE = ["198.51.100.7", "10.0.0.9", "2001:db8::5", "64:ff9b::c633:6407", "not-an-address"]
OWN = frozenset({ipaddress.ip_address("10.203.1.1"), ipaddress.ip_address("fd00:203:2::1")})


def _policy(mode: str) -> Policy:
    return parse_policy(CATCH_ALL.format(mode=mode), "catchall.yaml")


def _gate(mode: str) -> Gate:
    lists = shipped_lists()
    return Gate(_policy(mode), lambda _s, _d: frozenset(), make_name_detector(lists), stream_detectors(lists),
                own=lambda: OWN)  # fmt: skip


@pytest.mark.parametrize("mode", ["enforce", "report"])
@pytest.mark.parametrize("dst", [*THIS_HOST, "10.203.1.1", "fd00:203:2::1"])
def test_the_gateway_itself_is_never_dialled_whatever_the_rule_or_mode(mode: str, dst: str) -> None:
    gate = _gate(mode)
    sandbox = gate.policy.sandboxes[0]
    for port in (443, 6379):
        verdict = gate.on_connect(sandbox, dst.strip("[]"), port)
        assert verdict.action is Enforcement.BLOCK, (dst, port, verdict)
        assert verdict.reason is Reason.FIREWALL_DROP and verdict.rule == GATEWAY_GUARD
        assert "the gateway itself" in verdict.evidence


@pytest.mark.parametrize("mode", ["enforce", "report"])
def test_other_destinations_are_still_judged_by_the_rules(mode: str) -> None:
    gate = _gate(mode)
    sandbox = gate.policy.sandboxes[0]
    for dst in ("198.51.100.7", "2001:db8::5"):
        assert gate.on_connect(sandbox, dst, 443).action is Enforcement.ALLOW
    assert gate.on_connect(sandbox, "198.51.100.7", 80).action is not Enforcement.ALLOW


@pytest.mark.parametrize("dst", ELSEWHERE)
def test_refusal_leaves_other_addresses_alone(dst: str) -> None:
    assert refusal(dst, OWN) is None


def test_fib_trie_local_and_broadcast_addresses_are_the_gateways() -> None:
    text = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.203.1.0
        /24 link UNICAST
     |-- 10.203.1.1
        /32 host LOCAL
     |-- 10.203.1.255
        /32 link BROADCAST
     |-- 198.51.100.7
        /32 link UNICAST
"""
    assert read_fib_trie(text) == {ipaddress.ip_address("10.203.1.1"), ipaddress.ip_address("10.203.1.255")}


def test_own_addresses_are_read_again_after_a_while() -> None:
    now = [0.0]
    files = {FIB_TRIE: "     |-- 10.1.1.1\n        /32 host LOCAL\n", IF_INET6: ""}
    own = OwnAddresses(clock=lambda: now[0], read=lambda path: files[path])
    assert own() == {ipaddress.ip_address("10.1.1.1")}
    files[IF_INET6] = "fd000203000200000000000000000001 02 40 00 80 up0\n"
    now[0] = REFRESH_S / 2
    assert ipaddress.ip_address("fd00:203:2::1") not in own()
    now[0] = REFRESH_S
    assert ipaddress.ip_address("fd00:203:2::1") in own()


def test_own_addresses_of_this_process_include_loopback() -> None:
    assert ipaddress.ip_address("127.0.0.1") in OwnAddresses()() or not pathlib.Path("/proc/net/fib_trie").exists()


@pytest.mark.parametrize("mode", ["enforce", "report"])
def test_an_answer_that_is_the_gateway_itself_is_never_bound(mode: str) -> None:
    policy = _policy(mode)
    sandbox = policy.sandboxes[0]
    rule = sandbox.hosts[0]
    name = "x.wild.test"
    v4 = [dns.Record(dns.name_labels(name), dns.A, 60, ipaddress.IPv4Address(a).packed)
          for a in ("0.0.0.0", "127.0.0.1", "198.51.100.7")]  # fmt: skip
    mapped = ipaddress.IPv6Address("::ffff:127.0.0.1").packed
    records = (*v4, dns.Record(dns.name_labels(name), dns.AAAA, 60, mapped))
    judged = answers.judge(sandbox, name, rule, dns.Message(1, 0x8180, answers=records), shipped_lists())
    assert judged.refused is None
    assert [dns.address_of(r) for r in judged.sections[0]] == ["198.51.100.7"]
    assert len(judged.dropped) == 3 and all("the gateway itself" in d for d in judged.dropped)
