"""Red team 10b: the gateway's own loopback services through the proxy, by a destination that means "this host".

``nat_prerouting`` leaves connections to the gateway's own addresses alone (``fib daddr type local return``, so
that the proxy is never asked to reach the gateway's SSH, API or Redis: docs/nftables.md) and redirects every other
TCP connection to a proxy worker, which dials the original destination when a rule allows it. Two destinations
slip between the two: 0.0.0.0, which the kernel's address typing calls *broadcast*, not local, and
``::ffff:127.0.0.1``, an IPv4-mapped address that is no IPv6 address of the host. Both are redirected; a proxy
worker's ``connect`` to either reaches the gateway's own loopback. A catch-all network rule (0.0.0.0/0 or ::/0
on a port, tests/security/policies/redteam_catchall.yaml) allows them, as it allows any address.

Root in the sandbox writes such packets with an nft ``netdev`` table on its own interface
(`redteam_surfaces_kit.loopback_rewrite`: 192.0.2.99 and 2001:db8::99 stand in for the two), then speaks with
plain sockets. Rows: Redis's ``PING`` and the metrics endpoint, each way; and the whole bypass: the agent runs
``egress rules apply`` against the gateway's Redis with a policy of its own that allows blocked.lab, the gateway
follows the fleet's version (every second by default), and blocked.lab's page comes back. Ground truth: what the
gateway's services answered the sandbox, blocked.lab's page, the internet-side capture.

Fixed (both layers, every mode): the table drops these destinations first (``egress guard``), and the proxy refuses
them whatever the kernel reports (`egress.thishost`); ``loopback-proxy-layer-*`` tests the proxy's layer alone, with
the table's guard rules deleted from the running table.
"""

from __future__ import annotations

import contextlib
import ipaddress
import pathlib
import re
import sys
import time

import pytest

from egress.lab.demo import REDIS_PORT
from egress.lab.topology import GATEWAY_SBX_V4, server
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, SecurityLab, report
from tests.security.redteam_surfaces_kit import STAND_IN_V4, STAND_IN_V6, loopback_rewrite
from tests.waiting import eventually

pytestmark = pytest.mark.security

KIT = "from tests.security.redteam_surfaces_kit import {0}; {0}()"
METRICS_PORT = 9464
"""The gateway's metrics (`egress.gateway.config.METRICS_LISTEN`, 127.0.0.1)."""
BLOCKED = server("blocked")


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    opened = lab_factory(POLICIES / "redteam_catchall.yaml")
    done = opened.sandbox(["nft", "-f", "-"], stdin=loopback_rewrite(opened.lab.sandbox_if))
    assert done.returncode == 0, done.stderr
    return opened


def _talk(lab: SecurityLab, address: str, port: int, text: str) -> str:
    done = lab.sandbox_python(KIT.format("talk_main"), address, str(port), text, timeout=30)
    return done.stdout.strip()


# (row, stand-in, what it becomes, port, what is said, what an answer from the service starts with, bytes measured)
SERVICES = [
    ("redis-v4", STAND_IN_V4, "0.0.0.0", REDIS_PORT, "PING\\r\\n", "+PONG", "7"),
    ("metrics-v4", STAND_IN_V4, "0.0.0.0", METRICS_PORT, "GET /metrics HTTP/1.0\\r\\n\\r\\n", "HTTP/1.0 200",
     "3,049-5,828"),
    ("redis-mapped-v6", STAND_IN_V6, "::ffff:127.0.0.1", REDIS_PORT, "PING\\r\\n", "+PONG", "7"),
    ("metrics-mapped-v6", STAND_IN_V6, "::ffff:127.0.0.1", METRICS_PORT, "GET /metrics HTTP/1.0\\r\\n\\r\\n",
     "HTTP/1.0 200", "3,049-5,828"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("row", "stand_in", "becomes", "port", "text", "answer"), [pytest.param(*row[:6], id=row[0]) for row in SERVICES]
)
def test_the_gateways_loopback_services_are_not_reached_through_the_proxy(
    lab: SecurityLab, row: str, stand_in: str, becomes: str, port: int, text: str, answer: str
) -> None:
    said = _talk(lab, stand_in, port, text)
    got = re.match(r"got (\d+) bytes: b'(.*)", said)
    reached = bool(got) and got.group(2).startswith(answer)  # type: ignore[union-attr]
    report(
        f"redteam10/loopback-{row}",
        "gateway-surface",
        int(got.group(1)) if reached and got else 0,
        reached,
        None,
        f"{becomes}:{port} through the proxy: {said[:70]}",
    )
    assert not reached, f"the gateway's own service at {becomes}:{port} answered the sandbox: {said}"


def test_the_sandbox_cannot_apply_a_policy_through_the_gateways_redis(lab: SecurityLab, tmp_path: pathlib.Path) -> None:
    own = tmp_path / "agent-policy.yaml"
    text = (POLICIES / "redteam_catchall.yaml").read_text()
    allowed = "- {host: allowed.lab, ports: [80, 443]}"
    own.write_text(text.replace(allowed, f"{allowed}\n        - {{host: blocked.lab, ports: [80]}}"))
    assert "blocked.lab" in own.read_text()
    fetch = "GET / HTTP/1.1\\r\\nHost: blocked.lab\\r\\nConnection: close\\r\\n\\r\\n"
    lab.sandbox(["dig", "+short", "+time=2", "+tries=1", f"@{GATEWAY_SBX_V4}", BLOCKED.name])
    before = _talk(lab, BLOCKED.v4, 80, fetch)
    assert "403" in before, before  # the policy in force refuses blocked.lab
    since = time.time()
    with lab.capture("loopback-takeover") as capture:
        url = f"redis://{STAND_IN_V4}:{REDIS_PORT}/0"
        applied = lab.sandbox([sys.executable, "-m", "egress", "rules", "apply", "--redis-url", url, str(own)])
        pages: list[str] = []

        def served() -> None:  # as a client does: the name through the gateway's resolver, then the request
            lab.sandbox(["dig", "+short", "+time=2", "+tries=1", f"@{GATEWAY_SBX_V4}", BLOCKED.name])
            pages.append(_talk(lab, BLOCKED.v4, 80, fetch))
            assert "X-Lab-Site: blocked.lab" in pages[-1], pages[-1]

        with contextlib.suppress(AssertionError):  # reported, then asserted
            eventually(served, timeout=20, interval=0.5)
    crossed = capture.result
    assert crossed is not None
    goal = bool(pages) and "X-Lab-Site: blocked.lab" in pages[-1]
    reason = lab.reason_of(since, lambda r: r.dst == BLOCKED.v4, timeout=5)
    report(
        "redteam10/loopback-policy-takeover",
        "gateway-surface",
        crossed.bytes_to(BLOCKED.v4, 80, "tcp"),
        goal,
        reason or None,
        f"rules apply via 0.0.0.0:{REDIS_PORT}: {applied.stdout.strip()[:50]}",
    )
    assert not goal, f"blocked.lab served the sandbox after its own policy was applied: {pages[-1][:80]}"


def test_a_report_mode_sandbox_cannot_erase_its_records_through_the_gateways_redis(lab_factory: LabFactory) -> None:
    """Report mode relays what enforce would block (docs/policy.md), 0.0.0.0 included: no catch-all rule needed.
    The agent's attempt at blocked.lab is recorded (would-block); then it deletes the sandbox's record streams."""
    lab = lab_factory(POLICIES / "report.yaml")
    done = lab.sandbox(["nft", "-f", "-"], stdin=loopback_rewrite(lab.lab.sandbox_if))
    assert done.returncode == 0, done.stderr
    since = time.time()
    _talk(lab, BLOCKED.v4, 80, "GET / HTTP/1.1\\r\\nHost: blocked.lab\\r\\nConnection: close\\r\\n\\r\\n")
    lab.records_until(since, lambda rs: [r for r in rs if r.dst == BLOCKED.v4])
    keys = "egress:{agent}:attempts egress:{agent}:by-time"
    said = _talk(lab, STAND_IN_V4, REDIS_PORT, f"DEL {keys}\\r\\n")
    with contextlib.suppress(AssertionError):  # the relayed Redis connection's own record, once written
        lab.records_until(since, lambda rs: [r for r in rs if r.dport == REDIS_PORT], timeout=10)
    left = [r for r in lab.records(since) if r.dst == BLOCKED.v4]
    report(
        "redteam10/loopback-report-erase",
        "unrecorded",
        0,
        not left,
        None if not left else str(left[0].reason),
        f"DEL through 0.0.0.0:{REDIS_PORT}: {said[:40]}",
    )
    assert left, f"the blocked.lab attempt's record is gone from Redis after the agent's DEL ({said})"


@pytest.mark.parametrize("mode", ["enforce", "report"])
def test_the_proxy_refuses_this_host_with_the_tables_guard_taken_out(lab_factory: LabFactory, mode: str) -> None:
    """The second layer alone (egress.thishost in the proxy): the table's guard rules for 0.0.0.0/8 and
    ::ffff:0:0/96 deleted from the running table, the proxy is asked to dial them and refuses, in both modes, and
    records why (firewall-drop, rule gateway-guard)."""
    lab = lab_factory(POLICIES / ("redteam_catchall.yaml" if mode == "enforce" else "report.yaml"))
    done = lab.sandbox(["nft", "-f", "-"], stdin=loopback_rewrite(lab.lab.sandbox_if))
    assert done.returncode == 0, done.stderr
    listing = lab.gateway(["nft", "-a", "list", "chain", "inet", "egress", "sandbox_sources"]).stdout
    handles = re.findall(r"^\s*ip6? daddr \{[^\n]*# handle (\d+)$", listing, re.MULTILINE)  # the guard's rules
    assert len(handles) >= 2, listing
    for handle in handles:
        deleted = lab.gateway(["nft", "delete", "rule", "inet", "egress", "sandbox_sources", "handle", handle])
        assert deleted.returncode == 0, deleted.stderr
    since = time.time()
    said = {stand_in: _talk(lab, stand_in, REDIS_PORT, "PING\\r\\n") for stand_in in (STAND_IN_V4, STAND_IN_V6)}
    answered = {stand_in: text for stand_in, text in said.items() if "+PONG" in text}

    def guarded(records: list) -> bool:  # type: ignore[type-arg]
        dsts = {ipaddress.ip_address(r.dst) for r in records if r.dport == REDIS_PORT and r.rule == "gateway-guard"}
        return {ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("::ffff:127.0.0.1")} <= dsts

    with contextlib.suppress(AssertionError):  # reported, then asserted
        lab.records_until(since, guarded, timeout=15)
    found = [r for r in lab.records(since) if r.dport == REDIS_PORT]
    report(
        f"redteam10/loopback-proxy-layer-{mode}",
        "gateway-surface",
        0,
        bool(answered),
        ",".join(sorted({f"{r.reason}/{r.rule}" for r in found})) or None,
        f"table guard deleted; {said[STAND_IN_V4][:40]}",
    )
    assert not answered, f"the gateway's Redis answered through the proxy: {answered}"
    assert guarded(found), [(r.dst, r.reason, r.rule, r.action) for r in found]
    assert all(r.action == "block" for r in found if r.rule == "gateway-guard"), found
