"""The fake internet for real (root): lab up without any filtering, servers in the internet namespace, and every
attempt played from the sandbox reaches its server and gets that server's answer; then down() leaves nothing."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from egress.lab import netns, scenarios, servers
from egress.lab.scenarios import SCENARIOS, ScenarioResult
from egress.lab.topology import Lab
from tests.waiting import scaled

pytestmark = pytest.mark.root
PREFIX = "egt-lab-"
AUTHORITY = {False: "198.18.10.5", True: "2001:db8:10::5"}

EXPECTED = {
    "allowed_download": "HTTP 200, 307200 bytes, content matches",
    "disallowed_site": "blocked.lab: hello",
    "stratum_3333": "mining.notify job",
    "stratum_443": "mining.notify job",
    "stratum_tls": "mining.notify job",
    "xmrig_login": "login job lab-job-1 target b88d0600",
    "tls_pool_name": "mining.notify job",
    "sni_spoof": "mining.notify job",
    "host_spoof": "HTTP 200 blocked.lab: hello",
    "direct_ip": "HTTP 200 blocked.lab: hello",
    "dns_tunnel": "24/24 TXT/NULL queries answered",
    "doh": "DoH answer allowed.lab -> ",
    "ssh_80": "banner SSH-2.0-OpenSSH_9.6",
    "icmp_tunnel": "6/6 echo replies",
    "quic": "QUIC version negotiation",
    "websocket": "echo 'hello from the lab sandbox'",
}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    netns.down(PREFIX)
    proc: subprocess.Popen[bytes] | None = None
    try:
        lab = netns.up(PREFIX)
        proc = servers.start(lab)
        yield lab
    finally:
        if proc is not None:
            servers.stop(proc)
        netns.down(PREFIX)
    assert not set(Lab(PREFIX).namespaces) & netns.namespaces()


@pytest.fixture(scope="module")
def played(lab: Lab) -> dict[bool, dict[str, ScenarioResult]]:
    """Every attempt over IPv4 and over IPv6, asking the lab's authority directly (no gateway resolver here)."""
    return {
        v6: {r.name: r for r in scenarios.run_in_sandbox(lab, nameserver=AUTHORITY[v6], ipv6=v6, timeout=60)}
        for v6 in (False, True)
    }


def test_every_attempt_has_an_expectation() -> None:
    assert set(EXPECTED) == set(SCENARIOS)


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_attempt_reaches_its_server(played: dict[bool, dict[str, ScenarioResult]], name: str, ipv6: bool) -> None:
    result = played[ipv6][name]
    assert (result.outcome, EXPECTED[name] in result.detail) == ("ok", True), result
    assert result.elapsed_ms >= 0  # measured (how long it took is no test's business)


def test_doh_answers_the_family_asked(played: dict[bool, dict[str, ScenarioResult]]) -> None:
    assert played[False]["doh"].detail.endswith("198.18.10.1")
    assert played[True]["doh"].detail.endswith("2001:db8:10::1")


def test_without_a_resolver_names_fail_and_pools_fall_back(lab: Lab) -> None:
    """The sandbox's resolv.conf names the gateway, where nothing answers DNS in a lab with no gateway running."""
    results = {r.name: r for r in scenarios.run_in_sandbox(lab, ["allowed_download", "stratum_3333"], timeout=30)}
    assert results["allowed_download"].outcome == "refused"
    assert "DNS allowed.lab via 10.203.1.1" in results["allowed_download"].detail
    assert results["stratum_3333"].outcome == "ok"
    assert "used 198.18.10.3" in results["stratum_3333"].detail


def test_nothing_listening_is_refused(lab: Lab) -> None:
    """Same client code against a port with no server: the outcome must say so (the test above can fail)."""
    code = textwrap.dedent(
        """
        from egress.lab import sandbox_io
        ctx = sandbox_io.Context(timeout=2)
        try:
            sandbox_io.connect(ctx, "198.18.10.4", 3333)
        except OSError as error:
            print(sandbox_io.classify(error)[0])
        """
    )
    done = netns.exec_in(lab.sandbox_ns, [sys.executable, "-c", code], timeout=scaled(20))
    assert done.stdout.strip() == "refused", done.stderr


def test_keep_alive_and_big_download(lab: Lab) -> None:
    code = textwrap.dedent(
        """
        from egress.lab import sandbox_io
        ctx = sandbox_io.Context(timeout=2)
        sock = sandbox_io.connect(ctx, "198.18.10.1", 80)
        first = sandbox_io.http(sock, "GET", "/big?mb=3", "allowed.lab")
        second = sandbox_io.http(sock, "GET", "/", "allowed.lab")
        print(first.status, len(first.body), second.status, second.first_line)
        """
    )
    done = netns.exec_in(lab.sandbox_ns, [sys.executable, "-c", code], timeout=scaled(20))
    assert done.stdout.split(maxsplit=3) == ["200", str(3 << 20), "200", "allowed.lab: hello from the egress lab\n"]


def test_unknown_attempt_is_a_usage_error(lab: Lab) -> None:
    done = netns.exec_in(lab.sandbox_ns, [sys.executable, "-m", "egress.lab.scenarios", "nope"], timeout=scaled(20))
    assert done.returncode == 2 and "unknown attempt" in done.stderr
