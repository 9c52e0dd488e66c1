"""The demo's attempts (egress.lab.scenarios) as techniques of the suite: each played from the sandbox under
rules/lab-policy.yaml with the internet side captured, judged by the bytes that reached the attempt's own server,
the client's own view (outcome ``ok``: it got its server's answer) and the record.

The allowed ones (the package download, the WebSocket echo) are controls: their bytes are allowed traffic, not a
leak, and they must get through.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from egress.lab.topology import TUNNEL_V4, server
from egress.record.schema import AttemptRecord
from tests.security.capture import Crossed
from tests.security.harness import SecurityLab, report

pytestmark = pytest.mark.security


@dataclass(frozen=True, slots=True)
class Attempt:
    name: str
    cls: str
    dst: str
    port: int | None
    proto: str
    reason: str | None
    """The record reason it must get (None: any record, or none required)."""


def _v4(key: str) -> str:
    return server(key).v4


ATTEMPTS = [
    Attempt("disallowed_site", "policy", _v4("blocked"), None, "tcp", "dns-refused"),
    Attempt("stratum_3333", "mining", _v4("pool"), 3333, "tcp", "mining"),
    Attempt("stratum_443", "mining", _v4("pool"), 443, "tcp", None),
    Attempt("stratum_tls", "mining", _v4("pool"), 4443, "tcp", None),
    Attempt("xmrig_login", "mining", _v4("xmr"), 3334, "tcp", "mining"),
    Attempt("tls_pool_name", "mining", _v4("pool"), 443, "tcp", None),
    Attempt("sni_spoof", "name-binding", _v4("pool"), 443, "tcp", None),
    Attempt("host_spoof", "name-binding", _v4("blocked"), 80, "tcp", "name-address-mismatch"),
    Attempt("direct_ip", "name-binding", _v4("blocked"), 443, "tcp", "tls-no-sni"),
    Attempt("doh", "dns-bypass", _v4("doh"), 443, "tcp", None),
    Attempt("ssh_80", "tunnel", _v4("ssh"), 80, "tcp", "tunnel"),
    Attempt("icmp_tunnel", "tunnel", TUNNEL_V4, None, "icmp", "tunnel"),
    Attempt("quic", "policy", _v4("allowed"), 443, "udp", "firewall-drop"),
]
CONTROLS = {"allowed_download": (_v4("allowed"), 443), "websocket": (_v4("ws"), 80)}
TUNNEL_QUERY = b"\x01t\x03lab\x00"
"""The end of every query name under t.lab, as it is on the wire."""


def _record_for(lab: SecurityLab, since: float, attempt: Attempt) -> str:
    def mine(record: AttemptRecord) -> bool:
        return record.dst == attempt.dst or (attempt.reason == "dns-refused" and record.host == "blocked.lab")

    if attempt.reason is None:
        return lab.reason_of(since, mine, timeout=10)
    return lab.reason_of(since, lambda r: mine(r) and r.reason == attempt.reason)


def _play(lab: SecurityLab, name: str) -> tuple[bool, Crossed]:
    with lab.capture(name) as capture:
        [result] = lab.attempts([name])
    assert capture.result is not None
    return result.outcome == "ok", capture.result


@pytest.mark.parametrize("attempt", ATTEMPTS, ids=[attempt.name for attempt in ATTEMPTS])
def test_a_blocked_demo_attempt_leaks_nothing_to_its_server(security_lab: SecurityLab, attempt: Attempt) -> None:
    since = time.time()
    goal, crossed = _play(security_lab, attempt.name)
    leaked = crossed.bytes_to(attempt.dst, attempt.port, attempt.proto)
    reason = _record_for(security_lab, since, attempt)
    report(f"demo/{attempt.name}", attempt.cls, leaked, goal, reason)
    assert leaked == 0, crossed.table()
    assert not goal
    assert reason if attempt.reason is None else reason == attempt.reason


def test_the_dns_tunnel_attempt_gets_no_query_to_the_authority(security_lab: SecurityLab) -> None:
    since = time.time()
    goal, crossed = _play(security_lab, "dns_tunnel")
    authority = server("ns").v4
    leaked = crossed.bytes_to(authority, 53) if crossed.contains(TUNNEL_QUERY, authority) else 0
    reason = security_lab.reason_of(since, lambda r: r.host.endswith("t.lab"))
    report("demo/dns_tunnel", "tunnel", leaked, goal, reason)
    assert leaked == 0, crossed.table()
    assert not goal
    assert reason


@pytest.mark.parametrize("name", sorted(CONTROLS))
def test_an_allowed_demo_attempt_gets_through(security_lab: SecurityLab, name: str) -> None:
    goal, crossed = _play(security_lab, name)
    allowed = crossed.bytes_to(*CONTROLS[name], "tcp")
    report(f"demo/{name}", "control", allowed, goal, None, "allowed, not a leak")
    assert goal
    assert allowed > 0, crossed.table()
