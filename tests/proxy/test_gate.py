"""The proxy's first decision (egress.proxy.gate): a name finding that does not block (report mode's would-block,
or a detector set to ``record``) is carried in the decision, so it is recorded however the connection goes on."""

from __future__ import annotations

from pathlib import Path

import pytest

from egress.decide import Enforcement, Reason
from egress.detect.names import make_name_detector
from egress.detect.registry import stream_detectors
from egress.policy.lists import load_name_lists
from egress.policy.loader import parse_policy
from egress.proxy.gate import Gate, Kind, flow_meta
from tests.proxy.test_front import _client_hello

LISTS = Path(__file__).resolve().parents[2] / "rules" / "lists"
DST = ("192.0.2.10", 443)


def _gate(mode: str, tunnel: str) -> Gate:
    policy = parse_policy(
        f"""
version: 1
sandboxes:
  box:
    sources: [10.0.0.0/24]
    mode: {mode}
    allow:
      hosts:
        - {{host: dns.google, ports: [443]}}
    detectors: {{mining: block, tunnel: {tunnel}, crypto_node: block}}
"""
    )
    lists = load_name_lists(LISTS)
    return Gate(policy, lambda _sandbox, address: frozenset({"dns.google"}) if address == DST[0] else frozenset(),
                make_name_detector(lists), stream_detectors(lists))  # fmt: skip


@pytest.mark.parametrize(
    ("mode", "tunnel", "action"),
    [("report", "block", Enforcement.WOULD_BLOCK), ("enforce", "record", Enforcement.RECORD)],
)
def test_a_name_finding_that_does_not_block_is_kept_with_an_allowed_sni(
    mode: str, tunnel: str, action: Enforcement
) -> None:
    gate = _gate(mode, tunnel)
    sandbox = gate.sandbox("10.0.0.5")
    assert sandbox is not None
    decision = gate.on_first_bytes(sandbox, flow_meta(("10.0.0.5", 40000), DST), _client_hello("dns.google"), b"")
    assert decision.kind is Kind.PASSTHROUGH  # allowed by its host rule: it passes
    assert decision.verdict is not None, "the DoH name must still be recorded"
    assert (decision.verdict.action, decision.verdict.reason) == (action, Reason.TUNNEL)


def test_an_enforced_name_finding_refuses() -> None:
    gate = _gate("enforce", "block")
    sandbox = gate.sandbox("10.0.0.5")
    assert sandbox is not None
    decision = gate.on_first_bytes(sandbox, flow_meta(("10.0.0.5", 40000), DST), _client_hello("dns.google"), b"")
    assert decision.kind is Kind.REFUSE
    assert decision.verdict is not None and decision.verdict.reason is Reason.TUNNEL


def _network_gate() -> Gate:
    policy = parse_policy(
        """
version: 1
sandboxes:
  box:
    sources: [10.0.0.0/24]
    allow:
      networks:
        - {cidr: 198.18.10.3/32, ports: [3333], protocols: [tcp]}
    detectors: {mining: block, tunnel: block, crypto_node: block}
"""
    )
    lists = load_name_lists(LISTS)
    return Gate(policy, lambda _sandbox, _address: frozenset(), make_name_detector(lists), stream_detectors(lists))


SUBSCRIBE = b'{"id":1,"method":"mining.subscribe","params":[]}\n'


@pytest.mark.parametrize(
    "head",
    [b"\x16\x03\x01\x00\x05", b"\x16\x03\x01\x00\x40", b"\x16\x03\x03" + len(SUBSCRIBE).to_bytes(2)],
    ids=["5-byte-record", "record-over-json", "record-of-json"],
)
def test_a_tls_record_header_without_a_client_hello_is_inspected_not_passed(head: bytes) -> None:
    """Issue 9: a fake record header before Stratum was taken for "TLS without SNI" and passed through."""
    gate = _network_gate()
    sandbox = gate.sandbox("10.0.0.5")
    assert sandbox is not None
    meta = flow_meta(("10.0.0.5", 40000), ("198.18.10.3", 3333))
    decision = gate.on_first_bytes(sandbox, meta, head + SUBSCRIBE, b"")
    assert decision.kind is Kind.REFUSE
    assert decision.verdict is not None and decision.verdict.reason is Reason.MINING
    assert gate.on_first_bytes(sandbox, meta, head + b'{"id":1,"method":"echo"}\n', b"").kind is Kind.INSPECT
