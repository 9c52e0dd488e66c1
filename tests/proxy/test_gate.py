"""The proxy's first decision (egress.proxy.gate): a name finding that does not block (report mode's would-block,
or a detector set to ``record``) is carried in the decision, so it is recorded however the connection goes on."""

from __future__ import annotations

import ssl

import pytest

from egress.decide import Enforcement, Reason
from egress.detect import tls
from egress.detect.base import MORE, FlowView, _More
from egress.detect.names import make_name_detector
from egress.detect.registry import stream_detectors
from egress.policy.loader import parse_policy
from egress.proxy.gate import NOT_EXPECTED, Decision, Gate, Kind, flow_meta
from tests.lists import shipped_lists
from tests.proxy.test_front import _client_hello

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
    lists = shipped_lists()
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


# -- network rules: what they expect (egress.policy.model.Expect) -----------------------------------------------
NETWORK_POLICY = """
version: 1
sandboxes:
  box:
    sources: [10.0.0.0/24]
    mode: {mode}
    allow:
      hosts:
        - {{host: compute.test, ports: [443]}}
      networks:
        - {{cidr: 198.51.100.3/32, ports: [3333]}}
        - {{cidr: 198.51.100.4/32, ports: [22, 2222], expect: [ssh]}}
        - {{cidr: 198.51.100.5/32, ports: [443], tls: any}}
        - {{cidr: 198.51.100.6/32, expect: [any]}}
        - {{cidr: 198.51.100.8/32, ports: [3381], expect: [tls]}}
    detectors: {{mining: block, tunnel: block, crypto_node: block}}
"""
RANDOM = bytes.fromhex("8f3a5c19e27b44d0a16ce3f8275b9d0e41c2a7f35e86b01d9c4f2a6e83b75d10" * 8)
SSH_BANNER = b"SSH-2.0-OpenSSH_9.6\r\n"


def _network_gate(mode: str = "enforce") -> Gate:
    lists = shipped_lists()

    def names_for(_sandbox: str, address: str) -> frozenset[str]:
        return frozenset({"compute.test"}) if address == "198.51.100.3" else frozenset()

    return Gate(parse_policy(NETWORK_POLICY.format(mode=mode)), names_for, make_name_detector(lists),
                stream_detectors(lists))  # fmt: skip


def _first(gate: Gate, dst: tuple[str, int], client: bytes, server: bytes = b"", watching: bool = True) -> Decision:
    sandbox = gate.sandbox("10.0.0.5")
    assert sandbox is not None
    return gate.on_first_bytes(sandbox, flow_meta(("10.0.0.5", 40000), dst), client, server, watching=watching)


@pytest.mark.parametrize(
    ("name", "client", "server"),
    [
        ("random", RANDOM, b""),
        ("server-first-random", b"", RANDOM),
        ("printable-prefix", b"hello!" + RANDOM, b""),
        ("fake-tls-header", b"\x16\x03\x01\x00\xf0" + RANDOM, b""),
        ("fake-http-method", b"POST " + RANDOM, b""),
    ],
)
def test_a_fully_encrypted_opening_to_a_network_rule_is_a_tunnel(name: str, client: bytes, server: bytes) -> None:
    decision = _first(_network_gate(), ("198.51.100.3", 3333), client, server)
    assert decision.kind is Kind.REFUSE
    assert decision.verdict is not None and decision.verdict.reason is Reason.TUNNEL
    assert decision.verdict.finding is not None and decision.verdict.finding.protocol == "unidentified-encrypted"


def test_a_short_random_opening_waits_for_more() -> None:
    assert _first(_network_gate(), ("198.51.100.3", 3333), bytes.fromhex("8fe2199ca10ed3")).kind is Kind.WAIT


def test_any_lets_an_encrypted_opening_through_to_the_detectors() -> None:
    decision = _first(_network_gate(), ("198.51.100.6", 9000), RANDOM)
    assert decision.kind is Kind.INSPECT and decision.verdict is None


TLS_ONLY = ("198.51.100.8", 3381)
STRATUM_LINE = b'{"id":1,"method":"mining.subscribe","params":["x/1.0"]}\n'


@pytest.mark.parametrize(
    ("dst", "client", "server", "kind", "protocol"),
    [
        (TLS_ONLY, b"echo SHELL-42; id\n", b"", Kind.REFUSE, NOT_EXPECTED),
        (TLS_ONLY, b"", b"$ echo SHELL-42\n", Kind.REFUSE, NOT_EXPECTED),  # the server speaks first
        (TLS_ONLY, b"", b"220 mail.example ESMTP\r\n", Kind.REFUSE, NOT_EXPECTED),
        (TLS_ONLY, b"5ec7e75ec7e7da7a" * 64, b"", Kind.REFUSE, NOT_EXPECTED),  # bulk hex, no newline
        (TLS_ONLY, b"\r\n\r\n" + b"A" * 40, b"", Kind.REFUSE, NOT_EXPECTED),  # blank lines first
        (TLS_ONLY, b"\x00\x00\x00\x08\x04\xd2\x16\x2f", b"", Kind.REFUSE, NOT_EXPECTED),  # binary
        (TLS_ONLY, b"GET / HTTP/1.1\r\nHost: x.test\r\n\r\n", b"", Kind.HTTP, "http"),  # HTTP: not-allowlisted
        (TLS_ONLY, STRATUM_LINE, b"", Kind.REFUSE, "stratum-v1"),  # the detectors' finding first
        (TLS_ONLY, b"ab", b"", Kind.WAIT, None),  # too short to tell: waits, forwards nothing
        (TLS_ONLY, b"echo", b"$ ", Kind.WAIT, None),  # the client's opening decides, still short
        (("198.51.100.3", 3333), b"echo SHELL-42\n", b"", Kind.INSPECT, None),  # http expected: the detectors'
        (("198.51.100.4", 2222), b"echo SHELL-42\n", b"", Kind.REFUSE, NOT_EXPECTED),  # expects ssh only
        (("198.51.100.4", 2222), SSH_BANNER, b"", Kind.INSPECT, None),
        (("198.51.100.6", 9000), b"echo SHELL-42\n", b"", Kind.INSPECT, None),  # any: the detectors judge it
        (("198.51.100.6", 9000), b"", b"220 mail.example ESMTP\r\n", Kind.INSPECT, None),
    ],
    ids=[
        "shell-line",
        "server-first-prompt",
        "server-first-smtp",
        "bulk-hex",
        "blank-lines-first",
        "binary-header",
        "http-head",
        "stratum-line",
        "short",
        "short-client-server-spoke",
        "http-rule-plain",
        "ssh-rule-plain",
        "ssh-rule-ssh",
        "any-plain",
        "any-server-first",
    ],
)
def test_a_plain_opening_a_network_rule_does_not_expect_is_refused_at_once(
    dst: tuple[str, int], client: bytes, server: bytes, kind: Kind, protocol: str | None
) -> None:
    """Red team (plaintext): a line protocol to a rule expecting tls only was relayed to the inspection cap, so a
    reverse shell ran and bulk lines left below it. Now any opening such a rule does not expect is refused; a rule
    that expects http leaves plaintext to the detectors (it takes any HTTP body)."""
    decision = _first(_network_gate(), dst, client, server)
    assert decision.kind is kind
    if protocol is None:
        assert decision.verdict is None
    elif protocol == "http":
        assert decision.verdict is not None and decision.verdict.action is Enforcement.BLOCK
    else:
        assert decision.verdict is not None and decision.verdict.finding is not None
        assert decision.verdict.finding.protocol == protocol


def test_report_mode_lets_it_pass_as_a_would_block() -> None:
    decision = _first(_network_gate("report"), ("198.51.100.3", 3333), RANDOM)
    assert decision.kind is Kind.INSPECT
    assert decision.verdict is not None and decision.verdict.action is Enforcement.WOULD_BLOCK


@pytest.mark.parametrize(("dst", "kind"), [(("198.51.100.4", 22), Kind.INSPECT), (("198.51.100.4", 2222), Kind.INSPECT),
                                           (("198.51.100.3", 3333), Kind.REFUSE)])  # fmt: skip
def test_ssh_passes_only_where_the_rule_expects_it(dst: tuple[str, int], kind: Kind) -> None:
    decision = _first(_network_gate(), dst, b"", SSH_BANNER)
    assert decision.kind is kind, decision
    if kind is Kind.REFUSE:
        assert decision.verdict is not None and decision.verdict.reason is Reason.TUNNEL


def test_the_relay_inspector_leaves_expected_ssh_alone_and_judges_openings_elsewhere() -> None:
    gate = _network_gate()
    ssh_flow = gate.inspector(flow_meta(("10.0.0.5", 40000), ("198.51.100.4", 2222)))
    assert ssh_flow.feed_stream(False, SSH_BANNER) is None and ssh_flow.feed_stream(True, SSH_BANNER) is None
    other = gate.inspector(flow_meta(("10.0.0.5", 40000), ("198.51.100.3", 3333)))
    other.feed_stream(True, b"PING\r\n")
    found = other.feed_stream(True, RANDOM)  # a printable first flight, then ciphertext
    assert found is not None and found.protocol == "unidentified-encrypted"


def test_tls_without_sni_to_a_network_rule_is_refused() -> None:
    decision = _first(_network_gate(), ("198.51.100.3", 3333), _client_hello_without_sni())
    assert decision.kind is Kind.REFUSE
    assert decision.verdict is not None and decision.verdict.reason is Reason.TLS_NO_SNI


def test_tls_with_an_unbound_sni_to_a_network_rule_is_refused() -> None:
    decision = _first(_network_gate(), ("198.51.100.3", 3333), _client_hello("elsewhere.test"))
    assert decision.kind is Kind.REFUSE
    assert decision.verdict is not None and decision.verdict.reason is Reason.NOT_ALLOWLISTED


def test_tls_with_a_bound_sni_is_watched() -> None:
    decision = _first(_network_gate(), ("198.51.100.3", 3333), _client_hello("compute.test"))
    assert (decision.kind, decision.watch, decision.verdict) == (Kind.PASSTHROUGH, True, None)


def test_a_caller_that_cannot_watch_refuses_watched_tls() -> None:
    decision = _first(_network_gate(), ("198.51.100.3", 3333), _client_hello("compute.test"), watching=False)
    assert decision.kind is Kind.REFUSE
    assert decision.verdict is not None and decision.verdict.finding is not None
    assert decision.verdict.finding.protocol == "tls-unwatched"


def test_tls_any_passes_without_sni_recorded_and_watched() -> None:
    decision = _first(_network_gate(), ("198.51.100.5", 443), _client_hello_without_sni())
    assert decision.kind is Kind.PASSTHROUGH and decision.watch
    assert decision.verdict is not None and decision.verdict.action is Enforcement.RECORD
    assert decision.verdict.reason is Reason.TLS_NO_SNI


def test_tls_to_a_rule_that_expects_only_ssh_is_refused() -> None:
    decision = _first(_network_gate(), ("198.51.100.4", 22), _client_hello("compute.test"))
    assert decision.kind is Kind.REFUSE
    assert decision.verdict is not None and decision.verdict.reason is Reason.NOT_ALLOWLISTED


def _client_hello_without_sni() -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing)  # no server_hostname: no SNI
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


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
    meta = flow_meta(("10.0.0.5", 40000), ("198.51.100.3", 3333))  # a network rule, default expect
    decision = gate.on_first_bytes(sandbox, meta, head + SUBSCRIBE, b"")
    assert decision.kind is Kind.REFUSE
    assert decision.verdict is not None and decision.verdict.reason is Reason.MINING
    assert gate.on_first_bytes(sandbox, meta, head + b'{"id":1,"method":"echo"}\n', b"").kind is Kind.INSPECT
    tls_only = flow_meta(("10.0.0.5", 40000), ("198.51.100.8", 3381))  # red team: refused at its opening there
    other = gate.on_first_bytes(sandbox, tls_only, head + b'{"id":1,"method":"echo"}\n', b"")
    assert other.kind is Kind.REFUSE and other.verdict is not None and other.verdict.reason is Reason.TUNNEL
    assert other.verdict.finding is not None and other.verdict.finding.protocol == NOT_EXPECTED


# -- a raw stream left unidentified at the inspection cap (issue 9, point 4) ---------------------------------------
ANY_RULE = """version: 1
sandboxes:
  box:
    sources: [10.0.0.0/24]
    allow:
      hosts: [{host: allowed.test, ports: [443, 587]}]
      networks:
        - {cidr: 192.0.2.10/32, ports: [3333]}
        - {cidr: 192.0.2.10/32, ports: [4444], expect: [any]}
"""


def _strict_gate() -> Gate:
    def names_for(sandbox: str, address: str) -> frozenset[str]:
        return frozenset({"allowed.test"}) if address == DST[0] else frozenset()

    lists = shipped_lists()
    return Gate(parse_policy(ANY_RULE), names_for, make_name_detector(lists), stream_detectors(lists))


@pytest.mark.parametrize(("port", "strict"), [(587, True), (443, True), (3333, True), (4444, False)])
def test_an_unidentified_stream_is_blocked_on_host_rule_ports_and_where_a_network_rule_names_protocols(
    port: int, strict: bool
) -> None:
    """Before, only a network rule's destination was strict: padding past the cap to a host rule's port bought an
    uninspected connection to the bound name. Only a network rule that says ``any`` lets it through."""
    gate = _strict_gate()
    sandbox = gate.policy.sandboxes[0]
    assert gate.strict(sandbox, flow_meta(("10.0.0.5", 40000), (DST[0], port))) is strict


STARTTLS = b"EHLO sandbox\r\nSTARTTLS\r\n"


@pytest.mark.parametrize(
    ("client", "port", "passes"),
    [
        (STARTTLS + _client_hello("allowed.test"), 587, True),  # upgraded to TLS that names the bound host
        (b"\x00\x00\x00\x08\x04\xd2\x16\x2f" + _client_hello("allowed.test"), 587, True),  # PostgreSQL SSLRequest
        (STARTTLS + _client_hello("evil.test"), 587, False),  # a name not bound to the address
        (STARTTLS + _client_hello("allowed.test")[:60], 587, False),  # a hello cut short is no hello
        (STARTTLS + b"\x16\x03\x01\x00\x05" + b" " * 4000, 587, False),  # a record header alone
        (STARTTLS + _client_hello("allowed.test"), 3333, False),  # a network rule names what it speaks
    ],
    ids=["starttls", "sslrequest", "unbound-sni", "cut-hello", "fake-header", "network-rule"],
)
def test_a_stream_that_upgrades_to_tls_with_a_bound_name_is_not_unidentified(
    client: bytes, port: int, passes: bool
) -> None:
    gate = _strict_gate()
    sandbox = gate.policy.sandboxes[0]
    assert gate.bound_tls_in(sandbox, flow_meta(("10.0.0.5", 40000), (DST[0], port)), client) is passes


@pytest.mark.parametrize("mode", ["enforce", "report"])
def test_tls_begun_mid_stream_to_a_decrypted_name_is_refused_not_watched(mode: str) -> None:
    """Red team 3: TLS after a plaintext opening is watched undecrypted (`bound_hello_at`); to a name on the decrypt
    list that would relay undecrypted what the policy says to decrypt. Refused at its hello as a tunnel (recorded
    as would-block in report mode), never exempt from the unidentified verdict."""
    lists = shipped_lists()
    text = ANY_RULE.replace("    sources: [10.0.0.0/24]\n", f"    sources: [10.0.0.0/24]\n    mode: {mode}\n")
    text += "    decrypt: [allowed.test]\n"

    def names_for(sandbox: str, address: str) -> frozenset[str]:
        return frozenset({"allowed.test"}) if address == DST[0] else frozenset()

    gate = Gate(parse_policy(text), names_for, make_name_detector(lists), stream_detectors(lists))
    sandbox = gate.policy.sandboxes[0]
    meta = flow_meta(("10.0.0.5", 40000), (DST[0], 587))
    client = STARTTLS + _client_hello("allowed.test")
    assert gate.bound_hello_at(sandbox, meta, client) == -1
    assert not gate.bound_tls_in(sandbox, meta, client)
    decision = gate.unbound_hello(sandbox, meta, client)
    assert decision is not None and decision.verdict is not None and decision.host == "allowed.test"
    assert decision.verdict.reason is Reason.TUNNEL
    assert decision.verdict.finding is not None and decision.verdict.finding.protocol == "tls-not-decrypted"
    assert decision.kind is (Kind.REFUSE if mode == "enforce" else Kind.INSPECT)
    assert gate.unbound_hello(sandbox, meta, STARTTLS + _client_hello("allowed.test")[:60]) is None  # cut short


@pytest.mark.parametrize(("port", "refused"), [(443, True), (587, True), (3333, True), (4444, False)])
def test_clear_text_http2_is_refused_at_its_preface_unless_the_rule_says_any(port: int, refused: bool) -> None:
    """Red team 3: h2c with prior knowledge was a raw stream whose 7-byte DATA frames hid Stratum from the stream
    detectors. Its preface is refused (`h2c-not-inspected`) where the rule does not say ``any``; the preface's
    first bytes alone (an HTTP/1-looking head) wait for the rest."""
    gate = _strict_gate()
    sandbox = gate.policy.sandboxes[0]
    meta = flow_meta(("10.0.0.5", 40000), (DST[0], port))
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    frames = b"\x00\x00\x07\x00\x00\x00\x00\x00\x01" + b'{"id":1'
    decision = gate.on_first_bytes(sandbox, meta, preface + frames, b"")
    if refused:
        assert decision.kind is Kind.REFUSE and decision.verdict is not None
        assert decision.verdict.reason is Reason.TUNNEL
        assert decision.verdict.finding is not None and decision.verdict.finding.protocol == "h2c-not-inspected"
        assert gate.on_first_bytes(sandbox, meta, preface[:18], b"").kind is Kind.WAIT
    else:
        assert decision.kind is Kind.INSPECT


# -- the ClientHello is read once per decision (issue 15) -------------------------------------------------------
def test_the_gate_reads_a_client_hello_once_per_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gate's test that a ClientHello follows the record header, its reading of the SNI and the name detector
    share one parse (the detector gets it through the view's memo, `tls.client_hello_of`)."""
    parsed: list[bytes] = []
    parse = tls.parse_client_hello

    def counted(prefix: bytes, partial: bool = False) -> tls.ClientHello | None | _More:
        parsed.append(prefix)
        return parse(prefix, partial)

    monkeypatch.setattr(tls, "parse_client_hello", counted)
    gate = _gate("enforce", "block")
    sandbox = gate.sandbox("10.0.0.5")
    assert sandbox is not None
    meta = flow_meta(("10.0.0.5", 40000), ("192.0.2.11", 443))  # no name bound there: judged, not passed
    assert gate.on_first_bytes(sandbox, meta, _client_hello("example.org"), b"").kind is Kind.REFUSE
    assert len(parsed) == 1
    parsed.clear()
    assert gate.on_first_bytes(sandbox, flow_meta(("10.0.0.5", 40000), DST), _client_hello("dns.google"), b"")
    assert len(parsed) == 1, "the name detector's DoH finding came from the same parse"


def test_a_view_keeps_only_a_whole_client_hello() -> None:
    """`tls.client_hello_of` keeps a whole hello (the same for any longer prefix) and nothing else: a truncated one
    read from a complete view is not offered to a later, longer view's reader."""
    hello = _client_hello("dns.google")
    meta = flow_meta(("10.0.0.5", 40000), DST)
    whole = FlowView(meta, hello + b"more", complete=False)
    got = tls.client_hello_of(whole)
    assert isinstance(got, tls.ClientHello) and got == tls.parse_client_hello(hello, partial=True)
    assert whole.memo[tls.HELLO_MEMO] is got
    cut = FlowView(meta, hello[:300], complete=True)
    short = tls.client_hello_of(cut)
    assert isinstance(short, tls.ClientHello) and short.truncated and tls.HELLO_MEMO not in cut.memo
    assert tls.client_hello_of(FlowView(meta, hello[:300])) is MORE
