"""The whole gateway, for real: the lab's namespaces, nftables, mitmproxy workers, the resolver, nflog and a
redis-server, with a misbehaving agent's attempts played from the sandbox namespace.

One lab for the module (starting it takes seconds); tests that break the gateway (fail-closed, Redis outage)
use labs of their own. Every lab is removed on exit, whatever happens.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from egress.lab import netns
from egress.lab.demo import GatewayRun, running_gateway
from egress.record.schema import AttemptRecord

needs_lab = pytest.mark.skipif(
    os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("ip", "nft", "redis-server")),
    reason="needs root, iproute2, nftables and redis-server (the gateway runs in network namespaces)",
)
pytestmark = [needs_lab]

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAB_POLICY = ROOT / "rules" / "lab-policy.yaml"

# What each attempt must come to under rules/lab-policy.yaml (enforce), and the reason recorded for it.
EXPECTED = {
    "allowed_download": ("ok", None),
    "disallowed_site": ("refused", "dns-refused"),
    "stratum_3333": ("blocked", "mining"),
    "stratum_443": ("blocked", None),
    "stratum_tls": ("blocked", None),
    "xmrig_login": ("blocked", "mining"),
    "tls_pool_name": ("blocked", None),
    "sni_spoof": ("blocked", None),
    "host_spoof": ("blocked", "name-address-mismatch"),
    "direct_ip": ("blocked", "tls-no-sni"),
    "ssh_80": ("blocked", "tunnel"),
    "websocket": ("ok", None),
}
NOT_OK = ("dns_tunnel", "doh", "icmp_tunnel", "quic")


def _records(run: GatewayRun, wait: float = 3.0, want: int = 1) -> list[AttemptRecord]:
    """Records in the lab's Redis, read with `egress events --json` inside the gateway namespace."""
    argv = [sys.executable, "-m", "egress", "events", "--json", "--limit", "10000", "--redis-url", run.redis_url]
    deadline = time.monotonic() + wait
    found: list[AttemptRecord] = []
    while time.monotonic() < deadline:
        done = netns.exec_in(run.lab.gateway_ns, argv, timeout=30)
        found = [AttemptRecord.from_json(json.loads(line)) for line in done.stdout.splitlines() if line]
        if len(found) >= want:
            break
        time.sleep(0.3)
    return found


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayRun]:
    with running_gateway("egt-e2e-", LAB_POLICY) as run:
        yield run


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_demo_attempt_ends_as_expected(gateway: GatewayRun, name: str) -> None:
    outcome, _ = EXPECTED[name]
    [result] = gateway.attempts([name])
    assert result.outcome == outcome, result


@pytest.mark.parametrize("name", NOT_OK)
def test_tunnels_outside_tcp_do_not_get_through(gateway: GatewayRun, name: str) -> None:
    [result] = gateway.attempts([name])
    assert result.outcome != "ok", result


def test_blocks_are_recorded_with_their_reason(gateway: GatewayRun) -> None:
    names = [name for name, (_, reason) in EXPECTED.items() if reason is not None]
    gateway.attempts(names)
    records = _records(gateway, wait=5.0, want=len(names))
    reasons = {record.reason for record in records}
    for name in names:
        assert EXPECTED[name][1] in reasons, (name, sorted(reasons))
    for record in records:
        assert record.sandbox == "agent"
        assert record.action == "block"
        assert record.gateway == "egt-e2e-gw"


def test_a_blocked_http_request_gets_a_403_that_says_why(gateway: GatewayRun) -> None:
    [result] = gateway.attempts(["host_spoof"])
    assert "403" in result.detail
    assert "name-address-mismatch" in result.detail


def test_icmp_and_quic_drops_are_logged_and_recorded(gateway: GatewayRun) -> None:
    gateway.attempts(["icmp_tunnel", "quic"])
    records = _records(gateway, wait=5.0, want=2)
    transports = {(record.transport, record.reason) for record in records}
    assert ("icmp", "firewall-drop") in transports or any(
        r.category == "tunnel" and r.transport == "icmp" for r in records
    )
    assert ("udp", "firewall-drop") in transports


def test_ipv6_gets_the_same_policy(gateway: GatewayRun) -> None:
    results = {result.name: result for result in gateway.attempts(["allowed_download", "stratum_3333"], ipv6=True)}
    assert results["allowed_download"].outcome == "ok", results
    assert results["stratum_3333"].outcome == "blocked", results


@pytest.fixture
def report_policy(tmp_path: pathlib.Path) -> pathlib.Path:
    text = LAB_POLICY.read_text().replace("mode: enforce", "mode: report")
    path = tmp_path / "report.yaml"
    path.write_text(text)
    return path


def test_report_mode_lets_traffic_pass_and_records_would_block(report_policy: pathlib.Path) -> None:
    with running_gateway("egt-e2r-", report_policy) as run:
        results = {result.name: result for result in run.attempts(["stratum_3333", "allowed_download"])}
        assert results["stratum_3333"].outcome == "ok", results
        assert results["allowed_download"].outcome == "ok", results
        records = _records(run, wait=5.0)
        assert any(r.action == "would-block" and r.reason == "mining" for r in records), records


def _pids(run: GatewayRun, needle: str) -> list[int]:
    """Processes inside the lab's gateway namespace whose command line contains ``needle`` (other labs' processes
    share the PID namespace, so a plain pgrep would find theirs too)."""
    done = subprocess.run(
        ["ip", "netns", "pids", run.lab.gateway_ns], capture_output=True, text=True, timeout=5, check=False
    )
    found = []
    for pid in (int(word) for word in done.stdout.split()):
        try:
            cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if needle in cmdline:
            found.append(pid)
    return found


def _worker_pids(run: GatewayRun) -> list[int]:
    return _pids(run, "egress.proxy.addon")


def test_killing_a_proxy_worker_stops_all_sandbox_traffic() -> None:
    with running_gateway("egt-e2k-", LAB_POLICY) as run:
        assert run.attempts(["allowed_download"])[0].outcome == "ok"
        pids = _worker_pids(run)
        assert pids
        os.kill(pids[0], signal.SIGKILL)
        assert run.gateway is not None
        run.gateway.wait(timeout=15)
        assert run.gateway.returncode == 1
        for result in run.attempts(["allowed_download", "websocket", "quic"]):
            assert result.outcome != "ok", result


def test_killing_the_resolver_stops_all_sandbox_traffic() -> None:
    with running_gateway("egt-e2d-", LAB_POLICY) as run:
        assert run.gateway is not None
        run.gateway.send_signal(signal.SIGKILL)  # the resolver runs in the supervisor process
        run.gateway.wait(timeout=10)
        for result in run.attempts(["allowed_download", "websocket", "stratum_3333"]):
            assert result.outcome != "ok", result


def test_redis_down_then_up_loses_no_record() -> None:
    with running_gateway("egt-e2s-", LAB_POLICY) as run:
        redis_pid = int(netns.exec_in(run.lab.gateway_ns, ["pgrep", "-f", "redis-server"], timeout=5).stdout.split()[0])
        os.kill(redis_pid, signal.SIGKILL)
        time.sleep(0.5)
        blocked = ["stratum_3333", "xmrig_login", "direct_ip"]
        for result in run.attempts(blocked):
            assert result.outcome == "blocked", result
        time.sleep(1.0)
        restarted = netns.popen_in(
            run.lab.gateway_ns,
            [
                "redis-server",
                "--port",
                "6379",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--dir",
                str(run.state),
            ],
            stdout=subprocess.DEVNULL,
        )
        assert run.processes is not None
        run.processes.append(restarted)
        # the pool names were refused by the resolver first (two records), then each connection was blocked
        expected = ["dns-refused", "dns-refused", "mining", "mining", "tls-no-sni"]
        records = _records(run, wait=15.0, want=len(expected))
        assert sorted(record.reason for record in records) == expected
        assert len({record.id for record in records}) == len(records)
