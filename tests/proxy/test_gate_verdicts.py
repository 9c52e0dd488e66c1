"""The gate keeps the address verdicts of `Gate.on_connect` and of a ClientHello's name (egress.proxy.gate,
`Gate._verdict`): what it answers must be what `decide_raw` and `decide_tls` answer at that moment, for every
sandbox, address, port, name and binding, across a reload, for a sandbox of the policy before it, and past its
bound."""

from __future__ import annotations

import functools
import random

import pytest

from egress.decide import Enforcement, decide_raw, decide_tls
from egress.detect.names import make_name_detector
from egress.detect.registry import stream_detectors
from egress.policy.loader import parse_policy
from egress.policy.model import Policy, Sandbox
from egress.proxy import gate as gate_module
from egress.proxy.gate import VERDICTS_KEPT, Decision, Gate, Kind, flow_meta
from tests.lists import shipped_lists
from tests.proxy.test_front import _client_hello

POLICY = """
version: 1
sandboxes:
  box:
    sources: [10.0.0.0/24]
    link_pins_sources: true
    mode: enforce
    allow:
      hosts:
        - {host: allowed.test, ports: [443]}
        - {host: "*.wild.test", ports: [443, 8443]}
      networks:
        - {cidr: 192.0.2.20/32, ports: [443], protocols: [tcp]}
  watcher:
    sources: [10.0.1.0/24]
    link_pins_sources: true
    mode: report
    allow:
      hosts:
        - {host: allowed.test, ports: [443]}
"""
WITHOUT_ALLOWED = POLICY.replace(
    '        - {host: allowed.test, ports: [443]}\n        - {host: "*.wild', '        - {host: "*.wild'
)
ADDRESSES = ("192.0.2.10", "192.0.2.11", "192.0.2.20", "2001:db8::5")
NAMES = ("allowed.test", "a.wild.test", "other.test", "ALLOWED.test", "allowed.test.", "192.0.2.10")


@functools.cache
def _hello(name: str) -> bytes:
    return _client_hello(name)


class _Bindings:
    """Names bound per address, changed by the test as the resolver would."""

    def __init__(self) -> None:
        self.bound: dict[str, frozenset[str]] = {}

    def names_for(self, _sandbox: str, address: str) -> frozenset[str]:
        return self.bound.get(address, frozenset())


def _gate(policy: Policy, bindings: _Bindings) -> Gate:
    lists = shipped_lists()
    return Gate(policy, bindings.names_for, make_name_detector(lists), stream_detectors(lists))


def _sandbox(gate: Gate, source: str) -> Sandbox:
    sandbox = gate.sandbox(source)
    assert sandbox is not None
    return sandbox


def _allowed_bound() -> tuple[_Bindings, Gate]:
    """A gate under `POLICY`, 192.0.2.10 bound to allowed.test."""
    bindings = _Bindings()
    bindings.bound["192.0.2.10"] = frozenset({"allowed.test"})
    return bindings, _gate(parse_policy(POLICY), bindings)


def _hello_decision(gate: Gate, sandbox: Sandbox, dst: str, sni: str, sport: int = 40000) -> Decision:
    """The gate's decision on a ClientHello for ``sni`` from 10.0.0.5 to ``dst`` port 443."""
    return gate.on_first_bytes(sandbox, flow_meta(("10.0.0.5", sport), (dst, 443)), _hello(sni), b"", watching=True)


def _tls_verdict(gate: Gate, sandbox: Sandbox, source: str, dst: str, port: int, sni: str) -> object:
    decision = gate.on_first_bytes(sandbox, flow_meta((source, 40000), (dst, port)), _hello(sni), b"", watching=True)
    return decision.allow or decision.verdict


def _expected_tls(bindings: _Bindings, sandbox: Sandbox, dst: str, port: int, sni: str) -> object:
    return decide_tls(sandbox, dst, port, sni, sni in bindings.names_for(sandbox.name, dst))


def test_the_verdicts_are_those_of_deciding_again() -> None:
    """Random sandboxes, addresses, ports and names, with bindings that come and go between connections: each
    answer, kept or not, is what deciding again gives."""
    rng = random.Random(5)
    bindings = _Bindings()
    gate = _gate(parse_policy(POLICY), bindings)
    kept = 0
    for _ in range(600):
        if rng.random() < 0.2:
            address = rng.choice(ADDRESSES)
            bindings.bound[address] = frozenset(rng.sample(NAMES, rng.randrange(0, 3)))
        source = rng.choice(("10.0.0.5", "10.0.1.5"))
        sandbox = _sandbox(gate, source)
        dst, port = rng.choice(ADDRESSES), rng.choice((443, 8443, 22))
        names = bindings.names_for(sandbox.name, dst)
        assert gate.on_connect(sandbox, dst, port) == decide_raw(sandbox, dst, port, "tcp", names)
        sni = rng.choice(NAMES[:3])
        assert _tls_verdict(gate, sandbox, source, dst, port, sni) == _expected_tls(bindings, sandbox, dst, port, sni)
        kept = max(kept, len(gate._verdicts))
    assert kept > 0


def test_a_reload_is_judged_under_the_new_rules_at_once() -> None:
    _, gate = _allowed_bound()
    sandbox = _sandbox(gate, "10.0.0.5")
    assert gate.on_connect(sandbox, "192.0.2.10", 443).action is Enforcement.ALLOW
    assert _tls_verdict(gate, sandbox, "10.0.0.5", "192.0.2.10", 443, "allowed.test") is not None
    gate.policy = parse_policy(WITHOUT_ALLOWED)
    reloaded = _sandbox(gate, "10.0.0.5")
    assert gate.on_connect(reloaded, "192.0.2.10", 443).action is Enforcement.BLOCK
    assert _hello_decision(gate, reloaded, "192.0.2.10", "allowed.test", 40001).kind is Kind.REFUSE


def test_a_sandbox_of_the_policy_before_a_reload_keeps_its_own_rules() -> None:
    """A connection decided under the old policy may ask again after a reload (a keep-alive connection, the
    fast path's next request): it is judged by the sandbox it holds, and the new sandbox of that name by its own,
    whichever asks first."""
    _, gate = _allowed_bound()
    old = _sandbox(gate, "10.0.0.5")
    gate.policy = parse_policy(WITHOUT_ALLOWED)
    new = _sandbox(gate, "10.0.0.5")
    for sandbox, action in ((new, Enforcement.BLOCK), (old, Enforcement.ALLOW), (new, Enforcement.BLOCK)):
        assert gate.on_connect(sandbox, "192.0.2.10", 443).action is action
    for sandbox, action in ((old, Enforcement.ALLOW), (new, Enforcement.BLOCK), (old, Enforcement.ALLOW)):
        verdict = decide_tls(sandbox, "192.0.2.10", 443, "allowed.test", True)
        assert verdict.action is action
        assert _tls_verdict(gate, sandbox, "10.0.0.5", "192.0.2.10", 443, "allowed.test") == verdict


def test_a_binding_that_expires_is_seen_at_the_next_connection() -> None:
    bindings, gate = _allowed_bound()
    sandbox = _sandbox(gate, "10.0.0.5")
    assert gate.on_connect(sandbox, "192.0.2.10", 443).action is Enforcement.ALLOW
    assert _hello_decision(gate, sandbox, "192.0.2.10", "allowed.test").kind is Kind.PASSTHROUGH
    bindings.bound["192.0.2.10"] = frozenset()
    assert gate.on_connect(sandbox, "192.0.2.10", 443).action is Enforcement.BLOCK
    assert _hello_decision(gate, sandbox, "192.0.2.10", "allowed.test", 40001).kind is Kind.REFUSE


def test_a_kept_verdict_is_not_decided_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the keeping is for: a sandbox's next connection to the same address and name is not decided again."""
    calls: list[str] = []

    def counted_raw(*args: object) -> object:
        calls.append("raw")
        return decide_raw(*args)  # type: ignore[arg-type]

    def counted_tls(*args: object) -> object:
        calls.append("tls")
        return decide_tls(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(gate_module, "decide_raw", counted_raw)
    monkeypatch.setattr(gate_module, "decide_tls", counted_tls)
    _, gate = _allowed_bound()
    sandbox = _sandbox(gate, "10.0.0.5")
    for port in range(3):
        gate.on_connect(sandbox, "192.0.2.10", 443)
        _tls_verdict(gate, sandbox, "10.0.0.5", "192.0.2.10", 443, "allowed.test")
        assert port >= 0
    assert sorted(calls) == ["raw", "tls"]


def test_what_is_kept_stays_bounded() -> None:
    bindings = _Bindings()
    gate = _gate(parse_policy(POLICY), bindings)
    sandbox = _sandbox(gate, "10.0.0.5")
    for index in range(VERDICTS_KEPT + 10):
        dst = f"198.51.{index // 256 % 256}.{index % 256}"
        assert gate.on_connect(sandbox, dst, 443) == decide_raw(sandbox, dst, 443, "tcp", frozenset())
        assert len(gate._verdicts) <= VERDICTS_KEPT
