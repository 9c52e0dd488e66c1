"""A host rule's ``expect`` (red team 6): a raw stream (no SNI, no Host) to a host rule's port of a name bound to the
address is held to what the rule expects, as a network rule's is (`egress.proxy.gate.Gate.expecting`); TLS and HTTP
that name the host are checked against it too (`egress.decide._named`)."""

from __future__ import annotations

import pytest

from egress.decide import Enforcement, Reason
from egress.detect import encrypted, packed, ssh
from egress.detect.base import Detector, FlowMeta
from egress.detect.names import make_name_detector
from egress.detect.registry import stream_detectors
from egress.policy.loader import parse_policy
from egress.policy.model import Expect
from egress.proxy.gate import NOT_EXPECTED, Decision, Gate, Joined, Kind, flow_meta
from tests.lists import shipped_lists
from tests.proxy.test_front import _client_hello
from tests.security.redteam_uper_kit import _CALLS, call, framed

POLICY = """
version: 1
sandboxes:
  box:
    sources: [10.0.0.0/24]
    mode: {mode}
    allow:
      hosts:
        - {{host: plain.test, ports: [8080, 22, 6379]}}
        - {{host: git.test, ports: [22, 2222], expect: [ssh]}}
        - {{host: opaque.test, ports: [9000], expect: [any]}}
        - {{host: web.test, ports: [443, 80], expect: [tls]}}
        - {{host: shared-a.test, ports: [7000]}}
        - {{host: shared-b.test, ports: [7000], expect: [tls, http, ssh]}}
    detectors: {{mining: block, tunnel: block, crypto_node: block}}
"""
BOUND = {
    "192.0.2.1": frozenset({"plain.test"}),
    "192.0.2.2": frozenset({"git.test"}),
    "192.0.2.3": frozenset({"opaque.test"}),
    "192.0.2.4": frozenset({"web.test"}),
    "192.0.2.5": frozenset({"shared-a.test", "shared-b.test"}),
}
RANDOM = bytes.fromhex("8f3a5c19e27b44d0a16ce3f8275b9d0e41c2a7f35e86b01d9c4f2a6e83b75d10" * 8)
SSH_BANNER = b"SSH-2.0-OpenSSH_9.6\r\n"
PER = {framing: framed(call(*_CALLS[0]), framing) for framing in ("binary", "text")}
"""Red team 6's first call (``mining.subscribe`` in unaligned PER), as each framing sends it."""


def _gate(mode: str = "enforce") -> Gate:
    lists = shipped_lists()
    policy = parse_policy(POLICY.format(mode=mode))
    return Gate(policy, lambda _box, address: BOUND.get(address, frozenset()), make_name_detector(lists),
                stream_detectors(lists))  # fmt: skip


def _first(dst: tuple[str, int], client: bytes, server: bytes = b"", mode: str = "enforce") -> Decision:
    gate = _gate(mode)
    sandbox = gate.sandbox("10.0.0.5")
    assert sandbox is not None
    return gate.on_first_bytes(sandbox, flow_meta(("10.0.0.5", 40000), dst), client, server, watching=True)


def _refused(decision: Decision, protocol: str) -> None:
    assert decision.kind is Kind.REFUSE, decision
    assert decision.verdict is not None and decision.verdict.reason is Reason.TUNNEL, decision.verdict
    assert decision.verdict.finding is not None and decision.verdict.finding.protocol == protocol


@pytest.mark.parametrize("framing", sorted(PER))
def test_stratum_in_unaligned_per_to_a_host_rules_port_is_refused_at_its_opening(framing: str) -> None:
    """Red team 6's bypass: the first PDU (125-137 bytes, no name in it as bytes) to plain.test:8080 (a host rule,
    default ``expect``) is refused at its opening: since `egress.detect.packed` reads the name packed at 7 bits,
    as mining (the detectors' finding outranks the opening's ``tunnel``)."""
    decision = _first(("192.0.2.1", 8080), PER[framing])
    assert decision.kind is Kind.REFUSE, decision
    assert decision.verdict is not None and decision.verdict.reason is Reason.MINING, decision.verdict
    assert decision.verdict.finding is not None and decision.verdict.finding.detector == packed.NAME


@pytest.mark.parametrize(
    ("client", "server"),
    [(RANDOM, b""), (b"", RANDOM), (b"hello!" + RANDOM, b""), (b"\x16\x03\x01\x00\xf0" + RANDOM, b"")],
    ids=["random", "server-first-random", "printable-prefix", "fake-tls-header"],
)
def test_a_fully_encrypted_opening_to_a_host_rules_port_is_a_tunnel(client: bytes, server: bytes) -> None:
    decision = _first(("192.0.2.1", 8080), client, server)
    assert decision.kind is Kind.REFUSE, decision
    assert decision.verdict is not None and decision.verdict.reason in (Reason.TUNNEL, Reason.TLS_NO_SNI)


def test_report_mode_lets_it_through_recorded() -> None:
    decision = _first(("192.0.2.1", 8080), RANDOM, mode="report")
    assert decision.kind is Kind.INSPECT
    assert decision.verdict is not None and decision.verdict.action is Enforcement.WOULD_BLOCK


def test_a_short_random_opening_to_a_host_rules_port_waits_for_more() -> None:
    assert _first(("192.0.2.1", 8080), bytes.fromhex("8fe2199ca10ed3")).kind is Kind.WAIT


def test_ssh_to_port_22_of_a_host_rule_that_does_not_expect_it_is_refused() -> None:
    _refused(_first(("192.0.2.1", 22), SSH_BANNER), "ssh-not-expected")
    _refused(_first(("192.0.2.1", 22), b"", SSH_BANNER), "ssh-not-expected")  # the server speaks first


@pytest.mark.parametrize("port", [22, 2222])
def test_ssh_passes_a_host_rule_that_expects_it(port: int) -> None:
    """On 2222 too: the rule names ssh, so ssh's off-port finding is not a tunnel there (as for a network rule)."""
    decision = _first(("192.0.2.2", port), b"", SSH_BANNER)
    assert decision.kind is Kind.INSPECT and decision.verdict is None, decision


def test_any_lets_an_encrypted_opening_through_to_the_detectors() -> None:
    decision = _first(("192.0.2.3", 9000), RANDOM)
    assert decision.kind is Kind.INSPECT and decision.verdict is None


@pytest.mark.parametrize(
    ("client", "server"),
    [
        (b"*1\r\n$4\r\nPING\r\n", b""),  # Redis
        (bytes.fromhex("0000000804d2162f"), b""),  # PostgreSQL's SSLRequest
        (b"", b"220 mail.example ESMTP Postfix\r\n"),  # SMTP: the server speaks first
        (b"STARTTLS\r\n", b""),
        (b"a plain line protocol with several words in it\n", b""),
    ],
    ids=["redis", "postgres-sslrequest", "smtp", "starttls", "text-line"],
)
def test_plain_protocols_to_a_host_rules_port_pass(client: bytes, server: bytes) -> None:
    """The default ``expect`` takes http, and a rule that takes plain HTTP takes a plaintext stream (left to the
    detectors and the cap), as a network rule's default does."""
    decision = _first(("192.0.2.1", 6379), client, server)
    assert decision.kind is Kind.INSPECT and decision.verdict is None, decision


def test_a_host_rule_that_does_not_expect_http_refuses_a_plaintext_opening() -> None:
    decision = _first(("192.0.2.4", 80), b"a plain line protocol with several words in it\n")
    _refused(decision, NOT_EXPECTED)


def test_tls_naming_a_host_whose_rule_does_not_expect_tls_is_refused() -> None:
    decision = _first(("192.0.2.2", 22), _client_hello("git.test"))
    assert decision.kind is Kind.REFUSE, decision
    assert decision.verdict is not None and decision.verdict.reason is Reason.NOT_ALLOWLISTED
    assert "tls not expected" in decision.verdict.evidence
    assert _first(("192.0.2.4", 443), _client_hello("web.test")).kind is Kind.PASSTHROUGH


def test_http_naming_a_host_whose_rule_does_not_expect_http_is_blocked() -> None:
    request = b"GET / HTTP/1.1\r\nHost: web.test\r\n\r\n"
    decision = _first(("192.0.2.4", 80), request)
    assert decision.kind is Kind.HTTP
    assert decision.verdict is not None and decision.verdict.action is Enforcement.BLOCK
    assert decision.verdict.reason is Reason.NOT_ALLOWLISTED and "http not expected" in decision.verdict.evidence
    plain = _first(("192.0.2.1", 8080), b"GET / HTTP/1.1\r\nHost: plain.test\r\n\r\n")
    assert plain.kind is Kind.HTTP and plain.verdict is None


def test_names_sharing_an_address_expect_what_any_of_their_rules_does() -> None:
    gate = _gate()
    sandbox = gate.sandbox("10.0.0.5")
    assert sandbox is not None
    rule = gate.expecting(sandbox, flow_meta(("10.0.0.5", 40000), ("192.0.2.5", 7000)))
    assert isinstance(rule, Joined) and rule.expects(Expect.SSH) and not rule.expects(Expect.ANY)
    assert "hosts[4]" in rule.rule_id and "hosts[5]" in rule.rule_id
    assert _first(("192.0.2.5", 7000), b"", SSH_BANNER).kind is Kind.INSPECT
    _refused(_first(("192.0.2.5", 7000), RANDOM), encrypted.PROTOCOL)


def test_no_bound_name_no_host_rule() -> None:
    gate = _gate()
    sandbox = gate.sandbox("10.0.0.5")
    assert sandbox is not None
    assert gate.expecting(sandbox, flow_meta(("10.0.0.5", 40000), ("192.0.2.99", 8080))) is None


def test_the_relay_judges_a_host_rules_opening_again_and_its_cap_follows_any() -> None:
    """The relayed stream's inspection (`Gate.inspector`) runs `encrypted.detect_upgrading` unless the rule says ``any``
    (an opening judged plain on its first bytes is judged again on its window), leaves ssh alone where the rule
    says ``ssh``; the cap (`Gate.strict`) blocks what it leaves unidentified unless the rule says ``any``."""
    gate = _gate()
    sandbox = gate.sandbox("10.0.0.5")
    assert sandbox is not None

    def meta(dst: tuple[str, int]) -> FlowMeta:
        return flow_meta(("10.0.0.5", 40000), dst)

    def runs(where: FlowMeta) -> list[Detector]:
        return gate.inspector(where).pending

    plain, git, opaque = meta(("192.0.2.1", 8080)), meta(("192.0.2.2", 2222)), meta(("192.0.2.3", 9000))
    assert encrypted.detect_upgrading in runs(plain) and encrypted.detect_upgrading not in runs(opaque)
    assert ssh.detect not in runs(git) and ssh.detect in runs(plain)
    assert gate.strict(sandbox, plain) and gate.strict(sandbox, git) and not gate.strict(sandbox, opaque)
