"""The whole gateway, for real: the lab's namespaces, nftables, mitmproxy workers, the resolver, nflog and a
redis-server, with a misbehaving agent's attempts played from the sandbox namespace.

One lab for the module (starting it takes seconds); tests that break the gateway (fail-closed, Redis outage)
use labs of their own. Every lab is removed on exit, whatever happens.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from egress.lab import netns
from egress.lab.demo import GatewayRun, play_as_harness, running_gateway
from egress.record.schema import AttemptRecord
from tests.waiting import eventually, scaled

pytestmark = [pytest.mark.e2e, pytest.mark.root]

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAB_POLICY = ROOT / "rules" / "lab-policy.yaml"


def prefix(tag: str) -> str:
    """A lab prefix of this test process's own, so two runs on one machine never share namespaces."""
    return f"e{tag}{os.getpid() % 100000}-"


LAB_READY = 90.0
"""Seconds (scaled) each part of a lab may take to listen: a busy machine takes far longer than the demo's 30 s."""


def _lab(tag: str, policy: pathlib.Path) -> contextlib.AbstractContextManager[GatewayRun]:
    """A lab of this test process's own (see `prefix`), with the gateway running."""
    return running_gateway(prefix(tag), policy, ready_timeout=scaled(LAB_READY))


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


RECORD_WAIT = 30.0
"""Seconds (scaled) to wait for records: a repeat of an attempt an earlier test made on the shared lab is only
written when its aggregation window closes (10 s, egress/gateway/recorder.py)."""


def _records(run: GatewayRun, since: float) -> list[AttemptRecord]:
    """The records in the lab's Redis (read with `egress events --json` inside the gateway namespace) of attempts
    made at or after ``since``: on the shared lab, earlier tests' records are not this test's."""
    argv = [sys.executable, "-m", "egress", "events", "--json", "--limit", "10000", "--redis-url", run.redis_url]
    done = netns.exec_in(run.lab.gateway_ns, argv, timeout=scaled(30))
    found = [AttemptRecord.from_json(json.loads(line)) for line in done.stdout.splitlines() if line]
    return [record for record in found if max(record.ts, record.last_ts) >= since]


def _records_until(
    run: GatewayRun, since: float, check: Callable[[list[AttemptRecord]], None], timeout: float = RECORD_WAIT
) -> list[AttemptRecord]:
    """This test's records (see `_records`) once ``check`` (which asserts on them) passes."""
    found: list[AttemptRecord] = []

    def ready() -> bool:
        found[:] = _records(run, since)
        check(found)
        return True

    eventually(ready, timeout=timeout, interval=0.3)
    return found


@pytest.fixture(scope="module")
def gateway() -> Iterator[GatewayRun]:
    with _lab("a", LAB_POLICY) as run:
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
    since = time.time()
    gateway.attempts(names)

    def every_reason(records: list[AttemptRecord]) -> None:
        reasons = {record.reason for record in records}
        assert [name for name in names if EXPECTED[name][1] not in reasons] == [], sorted(reasons)

    records = _records_until(gateway, since, every_reason)
    refused = [record for record in records if record.reason == "dns-refused"]
    assert refused
    assert all((record.dst, record.dport) == ("10.203.1.1", 53) and record.host for record in refused), refused
    for record in records:
        assert record.sandbox == "agent"
        assert record.action == "block"
        assert record.gateway == f"{gateway.lab.prefix}gw"


def test_a_blocked_http_request_gets_a_403_that_says_why(gateway: GatewayRun) -> None:
    [result] = gateway.attempts(["host_spoof"])
    assert "403" in result.detail
    assert "name-address-mismatch" in result.detail


def test_icmp_and_quic_drops_are_logged_and_recorded(gateway: GatewayRun) -> None:
    since = time.time()
    gateway.attempts(["icmp_tunnel", "quic"])

    def both(records: list[AttemptRecord]) -> None:
        seen = {(record.transport, record.reason, record.protocol) for record in records}
        # The drop logger feeds every dropped echo request of the flow to the ICMP tunnel detector, which names the
        # tunnel by the fourth of the scenario's six (varying sizes, random bytes): the flow is recorded as one.
        assert ("icmp", "tunnel", "icmp-tunnel") in seen, seen
        assert ("udp", "firewall-drop", "udp") in seen, seen

    _records_until(gateway, since, both)


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
    with _lab("r", report_policy) as run:
        results = {result.name: result for result in run.attempts(["stratum_3333", "allowed_download"])}
        assert results["stratum_3333"].outcome == "ok", results
        assert results["allowed_download"].outcome == "ok", results

        def would_block(records: list[AttemptRecord]) -> None:
            assert any(r.action == "would-block" and r.reason == "mining" for r in records), records

        _records_until(run, 0.0, would_block)


def _pids(run: GatewayRun, needle: str) -> list[int]:
    """Processes inside the lab's gateway namespace whose command line contains ``needle`` (other labs' processes
    share the PID namespace, so a plain pgrep would find theirs too)."""
    done = subprocess.run(
        ["ip", "netns", "pids", run.lab.gateway_ns], capture_output=True, text=True, timeout=scaled(15), check=False
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
    return _pids(run, "egress.gateway.worker")


def test_killing_a_proxy_worker_locks_down_until_the_supervisor_restarted_it() -> None:
    with _lab("k", LAB_POLICY) as run:
        assert run.attempts(["allowed_download"])[0].outcome == "ok"
        pids = _worker_pids(run)
        assert pids
        os.kill(pids[0], signal.SIGKILL)
        log = run.lab.state_dir / "logs" / "gateway.log"

        def restarted() -> bool:
            text = log.read_text(errors="replace")
            assert "LOCKDOWN" in text and re.search(r"proxy-\d recovered in", text), text[-2000:]
            assert "policy table sha256:" in text.rsplit("recovered in", 1)[1], "the policy table is back"
            return True

        eventually(restarted, timeout=scaled(90), interval=0.3)
        assert run.gateway is not None and run.gateway.poll() is None  # the gateway did not stop
        assert pids[0] not in _worker_pids(run) and len(_worker_pids(run)) == len(pids)
        assert run.attempts(["allowed_download"])[0].outcome == "ok"


def test_killing_the_resolver_stops_all_sandbox_traffic() -> None:
    with _lab("d", LAB_POLICY) as run:
        assert run.gateway is not None
        run.gateway.send_signal(signal.SIGKILL)  # the resolver runs in the supervisor process
        run.gateway.wait(timeout=scaled(10))
        for result in run.attempts(["allowed_download", "websocket", "stratum_3333"]):
            assert result.outcome != "ok", result


def _spooled(run: GatewayRun) -> bool:
    """Whether a gateway component has put records in its disk spool (state/spool/<component>/seg-*.jsonl)."""
    return any(segment.stat().st_size > 0 for segment in (run.state / "spool").glob("*/seg-*.jsonl"))


def test_redis_down_then_up_loses_no_record() -> None:
    with _lab("s", LAB_POLICY) as run:
        [redis_pid] = _pids(run, "redis-server")  # this lab's own: pgrep would also see other labs'
        os.kill(redis_pid, signal.SIGKILL)
        eventually(lambda: _pids(run, "redis-server") == [], timeout=10)
        blocked = ["stratum_3333", "xmrig_login", "direct_ip"]
        for result in run.attempts(blocked):
            assert result.outcome == "blocked", result
        eventually(lambda: _spooled(run), timeout=20)  # the records went to disk while Redis was away
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

        def all_delivered(records: list[AttemptRecord]) -> None:
            assert sorted(record.reason for record in records) == expected

        records = _records_until(run, 0.0, all_delivered)
        assert len({record.id for record in records}) == len(records)


_DNS_PROBE = """
import socket, sys
from egress.detect import dns
query = dns.build_query(7, sys.argv[1], int(sys.argv[2]))
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    sock.settimeout(3)
    sock.sendto(query, ("10.203.1.1", 53))
    answer = dns.parse(sock.recv(4096))
print(answer.rcode, len(answer.answers))
"""


def _ask(run: GatewayRun, name: str, qtype: int = 1) -> tuple[int, int]:
    done = netns.exec_in(run.lab.sandbox_ns, [sys.executable, "-c", _DNS_PROBE, name, str(qtype)], timeout=scaled(15))
    rcode, answers = done.stdout.split()
    return int(rcode), int(answers)


def test_resolver_answers_allowed_names_refuses_others_and_the_doh_canary(gateway: GatewayRun) -> None:
    assert _ask(gateway, "allowed.lab") == (0, 1)
    assert _ask(gateway, "blocked.lab") == (5, 0)  # REFUSED
    assert _ask(gateway, "use-application-dns.net") == (3, 0)  # NXDOMAIN: browsers keep DNS on the gateway


def test_answered_addresses_enter_the_kernel_allow_set_with_a_timeout(gateway: GatewayRun) -> None:
    assert _ask(gateway, "allowed.lab") == (0, 1)

    def listed() -> str:
        done = netns.exec_in(gateway.lab.gateway_ns, ["nft", "list", "set", "inet", "egress", "allow4_agent"])
        assert "198.18.10.1" in done.stdout, done.stdout
        return done.stdout

    assert "expires" in eventually(listed, timeout=10, interval=0.1)


_TLS_PROBE = """
import socket, ssl, sys
from egress.detect import dns
query = dns.build_query(9, "allowed.lab", 1)
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    sock.settimeout(3)
    sock.sendto(query, ("10.203.1.1", 53))
    address = dns.address_of(dns.parse(sock.recv(4096)).answers[0])
context = ssl.create_default_context(cafile=sys.argv[1])
for host in ("allowed.lab", "blocked.lab") * 4:  # spread over the proxy workers: each must sign with the one CA
    with socket.create_connection((address, 443), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="allowed.lab") as tls:
            issuer = dict(item[0] for item in tls.getpeercert()["issuer"])
            tls.sendall(f"GET / HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: close\\r\\n\\r\\n".encode())
            reply = b""
            while chunk := tls.recv(65536):
                reply += chunk
    print(issuer.get("organizationName"), reply.split(b"\\r\\n", 1)[0].decode())
"""


def test_hosts_on_the_decrypt_list_are_intercepted_and_fronting_is_refused(tmp_path: pathlib.Path) -> None:
    policy = tmp_path / "decrypt.yaml"
    policy.write_text(LAB_POLICY.read_text().replace("    detectors:", "    decrypt: [allowed.lab]\n    detectors:"))
    with _lab("t", policy) as run:
        argv = [sys.executable, "-c", _TLS_PROBE, str(run.gateway_ca)]
        done = netns.exec_in(run.lab.sandbox_ns, argv, timeout=scaled(30))
        lines = done.stdout.splitlines()
        assert len(lines) == 8, done.stderr
        for allowed, fronted in zip(lines[::2], lines[1::2], strict=True):
            assert allowed == "egress HTTP/1.1 200 OK"  # the gateway's CA (O=egress) signed it: intercepted
            assert fronted.startswith("egress HTTP/1.1 403")  # Host differs from the allowed SNI

        def fronting(records: list[AttemptRecord]) -> None:
            assert any(record.reason == "domain-fronting" for record in records), records

        _records_until(run, 0.0, fronting)


_WORKER_IN_FORCE = re.compile(r" (proxy-\d+): policy (sha256:[0-9a-f]{16}) in force$")
_SUPERVISOR_IN_FORCE = re.compile(
    r"gateway running: policy (sha256:[0-9a-f]{16}) from | policy (sha256:[0-9a-f]{16}) from .* in force in "
)


def _gateway_log(run: GatewayRun) -> str:
    return (run.lab.state_dir / "logs" / "gateway.log").read_text()


def _in_force(run: GatewayRun) -> tuple[list[str], dict[str, str]]:
    """What each component last said it runs: the supervisor's versions in order (start, then each reload every
    component committed), and each proxy worker's own last line (written by the worker's process)."""
    supervisor: list[str] = []
    workers: dict[str, str] = {}
    for line in _gateway_log(run).splitlines():
        if found := _SUPERVISOR_IN_FORCE.search(line):
            supervisor.append(found.group(1) or found.group(2))
        elif found := _WORKER_IN_FORCE.search(line):
            workers[found.group(1)] = found.group(2)
    return supervisor, workers


def _label(text: str) -> str:
    return f"sha256:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _reloaded(run: GatewayRun, reloads: int) -> str:
    """Wait until the supervisor has reported ``reloads`` reloads in force everywhere; the last one's label."""

    def done() -> str:
        supervisor, _ = _in_force(run)
        assert len(supervisor) > reloads, _gateway_log(run)[-3000:]  # the start, then each reload
        return supervisor[-1]

    return eventually(done, timeout=60, interval=0.2)


def _replace(path: pathlib.Path, text: str) -> None:
    """Write ``text`` the way editors and config tools do, by renaming a whole file over the old one: a reader
    sees the old content or the new, never half of it (a half-written file would only be rejected)."""
    fresh = path.with_suffix(".tmp")
    fresh.write_text(text)
    os.replace(fresh, path)


_WS_RULE = "        - {host: ws.lab, ports: [80]}\n"


def test_reload_applies_a_valid_policy_and_keeps_the_old_one_on_a_bad_file(tmp_path: pathlib.Path) -> None:
    policy = tmp_path / "policy.yaml"
    original = LAB_POLICY.read_text()
    policy.write_text(original)
    with _lab("h", policy) as run:
        assert run.gateway is not None
        assert run.attempts(["websocket"])[0].outcome == "ok"
        without_ws = original.replace(_WS_RULE, "")
        policy.write_text(without_ws)
        run.gateway.send_signal(signal.SIGHUP)
        assert _reloaded(run, 1) == _label(without_ws)
        assert run.attempts(["websocket"])[0].outcome != "ok"  # ws.lab is no longer allowed
        policy.write_text(original.replace("version: 1", "version: 1\nsurprise: true"))
        run.gateway.send_signal(signal.SIGHUP)
        eventually(lambda: "policy reload rejected" in _gateway_log(run), timeout=60, interval=0.2)
        assert "surprise" in _gateway_log(run)
        assert run.gateway.poll() is None  # still running...
        results = {r.name: r.outcome for r in run.attempts(["allowed_download", "websocket"])}
        assert results["allowed_download"] == "ok" and results["websocket"] != "ok", results  # the last good one
        assert _in_force(run)[0][-1] == _label(without_ws)


def test_a_reload_reaches_every_component_with_the_same_policy(tmp_path: pathlib.Path) -> None:
    """The sandbox is renamed; the file is edited again right after SIGHUP (with no second signal): whichever
    content the supervisor read, every component runs that one, and the drop logger records under the new name."""
    policy = tmp_path / "policy.yaml"
    original = LAB_POLICY.read_text()
    policy.write_text(original)
    with _lab("n", policy) as run:
        assert run.gateway is not None
        renamed = original.replace("\n  agent:\n", "\n  renamed:\n")
        edited = renamed.replace(_WS_RULE, "")
        assert renamed != original and edited != renamed
        _replace(policy, renamed)
        run.gateway.send_signal(signal.SIGHUP)
        _replace(policy, edited)
        label = _reloaded(run, 1)
        assert label in {_label(renamed), _label(edited)}
        supervisor, workers = _in_force(run)
        assert sorted(workers) == [f"proxy-{index}" for index in range(run.workers)]
        assert set(workers.values()) == {label}, (supervisor, workers)  # no worker on another policy
        [quic] = run.attempts(["quic"])  # UDP: dropped by nftables, judged by the drop logger
        assert quic.outcome != "ok", quic

        def dropped_under_the_new_name() -> list[AttemptRecord]:
            records = _records(run, 0.0)
            drops = [r for r in records if r.transport == "udp" and r.reason == "firewall-drop"]
            assert drops, records
            return records

        records = eventually(dropped_under_the_new_name, timeout=60, interval=0.2)
        assert {record.sandbox for record in records} == {"renamed"}, records  # none under the old name


def test_the_harness_s_actions_explain_the_blocked_attempts() -> None:
    # a lab of its own: in the shared one, earlier identical attempts would be aggregated with these
    with _lab("j", LAB_POLICY) as run:
        play_as_harness(run, ["allowed_download", "stratum_3333"])
        argv = [sys.executable, "-m", "egress", "timeline", "agent", "--json", "--slack", "0.1"]
        done = netns.exec_in(run.lab.gateway_ns, [*argv, "--redis-url", run.redis_url], timeout=scaled(30))
        items = [json.loads(line) for line in done.stdout.splitlines()]
        actions = [item["action"]["id"] for item in items if item["type"] == "action"]
        assert actions == ["demo-00-allowed_download", "demo-01-stratum_3333"]
        mining = [item for item in items if item["type"] == "attempt" and item["attempt"]["reason"] == "mining"]
        assert len(mining) == 1, done.stdout or done.stderr
        assert mining[0]["related"] == ["demo-01-stratum_3333"]


_GET = """
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())
"""


def test_the_api_serves_the_gateway_s_decisions_as_metrics() -> None:
    # a lab of its own: on the shared one, earlier tests' decisions would satisfy every check below
    with _lab("m", LAB_POLICY) as run:
        run.attempts(["allowed_download", "stratum_3333"])
        api = netns.popen_in(
            run.lab.gateway_ns,
            [sys.executable, "-m", "egress", "api", "serve", "--lab", "--listen", "127.0.0.1:8090",
             "--redis-url", run.redis_url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:

            def published() -> bool:
                """Each component (two proxy workers, the resolver) publishes its counters every 5 s."""
                argv = [sys.executable, "-c", _GET, "http://127.0.0.1:8090/metrics"]
                text = netns.exec_in(run.lab.gateway_ns, argv, timeout=scaled(30)).stdout
                decisions = [line for line in text.splitlines() if line.startswith("egress_gateway_decisions_total{")]
                proxy = [d for d in decisions if 'component="proxy"' in d]
                assert any('action="block"' in d and 'reason="mining"' in d for d in proxy), decisions or text
                assert any('action="allow"' in d for d in proxy), decisions
                assert any('component="dns"' in d for d in decisions), decisions
                assert "egress_gateway_records_written_total{" in text, text
                return True

            eventually(published, timeout=30, interval=0.5)
        finally:
            api.terminate()
            api.wait(timeout=scaled(10))
