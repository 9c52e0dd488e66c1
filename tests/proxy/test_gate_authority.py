"""Red team 9 at the gate (egress.proxy.gate): an opening that starts like an HTTP request but that the gate's reader
does not take (HTTP/0.9, another version word, a method it does not know, a field line it refuses) is refused as
``tunnel``/``http-protocol-error`` where the rule expects ``http`` but not ``any``, instead of being relayed as a
raw stream with its Host unjudged; a Host naming another port than the connection's is refused."""

from __future__ import annotations

import pytest

from egress.decide import Enforcement, Reason
from egress.detect.names import make_name_detector
from egress.detect.registry import stream_detectors
from egress.policy.loader import parse_policy
from egress.proxy import gate as gate_module
from egress.proxy.gate import Decision, Gate, Kind, flow_meta
from tests.lists import shipped_lists

WEB, OPAQUE = "192.0.2.10", "192.0.2.20"
POLICY = """
version: 1
sandboxes:
  box:
    sources: [10.0.0.0/24]
    mode: {mode}
    allow:
      hosts:
        - {{host: web.test, ports: [80, 8080]}}
        - {{host: opaque.test, ports: [80], expect: [any]}}
"""


def _decide(client: bytes, dst: str = WEB, port: int = 8080, mode: str = "enforce") -> Decision:
    names = {WEB: frozenset({"web.test"}), OPAQUE: frozenset({"opaque.test"})}
    lists = shipped_lists()
    gate = Gate(parse_policy(POLICY.format(mode=mode)), lambda _s, address: names.get(address, frozenset()),
                make_name_detector(lists), stream_detectors(lists))  # fmt: skip
    sandbox = gate.sandbox("10.0.0.5")
    assert sandbox is not None
    return gate.on_first_bytes(sandbox, flow_meta(("10.0.0.5", 40000), (dst, port)), client, b"")


UNREAD = {
    "junk-name": b"GET / HTTP/1.1\r\nHost: blocked.test\r\nX@Junk: 1\r\n\r\n",
    "no-colon": b"GET / HTTP/1.1\r\nHost: blocked.test\r\nJunk\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost : blocked.test\r\n\r\n",
    "tab-before-colon": b"GET / HTTP/1.1\r\nHost\t: blocked.test\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: web.test\r\nX-Fold: a\r\n\tHost: blocked.test\r\n\r\n",
    "http09": b"GET http://blocked.test/\r\n\r\n",
    "http09-slash-slash": b"GET //blocked.test/\r\n\r\n",
    "version-2": b"GET http://blocked.test/ HTTP/2.0\r\nHost: web.test\r\n\r\n",
    "version-lowercase": b"GET http://blocked.test/ http/1.1\r\nHost: web.test\r\n\r\n",
    "unknown-method": b"BREW / HTTP/1.1\r\nHost: blocked.test\r\n\r\n",
    "lowercase-method": b"get //blocked.test/ HTTP/1.1\r\nHost: web.test\r\n\r\n",
    "lowercase-http09": b"get http://blocked.test/\r\n\r\n",
    "head-past-the-reader": b"GET / HTTP/1.1\r\nHost: blocked.test\r\n" + b"X-Pad: " + b"a" * 9000 + b"\r\n\r\n",
}


@pytest.mark.parametrize("client", list(UNREAD.values()), ids=list(UNREAD))
def test_an_http_opening_the_gate_cannot_read_is_refused(client: bytes) -> None:
    decision = _decide(client)
    assert decision.kind is Kind.REFUSE, decision
    assert decision.verdict is not None and decision.verdict.reason is Reason.TUNNEL
    assert decision.verdict.finding is not None and decision.verdict.finding.protocol == "http-protocol-error"


def test_report_mode_records_it_and_lets_it_through() -> None:
    decision = _decide(UNREAD["junk-name"], mode="report")
    assert decision.kind is Kind.INSPECT
    assert decision.verdict is not None and decision.verdict.action is Enforcement.WOULD_BLOCK


def test_a_rule_that_says_any_still_relays_it_raw() -> None:
    assert _decide(UNREAD["junk-name"], OPAQUE, 80).kind is Kind.INSPECT


def test_a_request_line_still_arriving_is_waited_for() -> None:
    assert _decide(b"BREW /long/path").kind is Kind.WAIT
    assert _decide(b"get //blocked.test/").kind is Kind.WAIT


@pytest.mark.parametrize(
    ("client", "like"),
    [
        (b"BREW / HTTP/1.1\r\n", True),
        (b"get http://x/\r\n", True),
        (b"get key\r\n", False),  # memcached
        (b"NICK agent\r\n", False),  # IRC
        (b"PING\r\n", False),
        (b"SSH-2.0-OpenSSH_9.6 Ubuntu\r\n", False),
        (b"*1\r\n$4\r\nPING\r\n", False),
    ],
)
def test_what_starts_like_an_http_request(client: bytes, like: bool) -> None:
    assert gate_module._http_like(client) is like


@pytest.mark.parametrize("host", ["web.test:22", "web.test:022", "WEB.TEST:80", "web.test:x", "[::1]:22"])
def test_a_host_naming_another_port_is_refused(host: str) -> None:
    decision = _decide(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert decision.kind is Kind.HTTP  # answered as HTTP: a 403 naming why
    assert decision.verdict is not None and decision.verdict.action is Enforcement.BLOCK
    assert decision.verdict.reason is Reason.NOT_ALLOWLISTED and "names port" in decision.verdict.evidence


@pytest.mark.parametrize("host", ["web.test", "web.test:8080", "web.test:", "web.test:08080"])
def test_a_host_naming_the_connection_s_port_or_none_passes(host: str) -> None:
    decision = _decide(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert decision.kind is Kind.HTTP and decision.verdict is None and decision.allow is not None
