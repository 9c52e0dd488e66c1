"""The gateway's own metrics endpoint (egress.gateway.metrics): a real scrape, with a real redis-server stopped,
shows the decisions, the spool and the delivery failures of the supervisor's process and of a worker (whose
counts come with its ping answer over a real control channel), passes ``promtool check metrics``; it never listens
on a wildcard nor the sandbox interface; a worker's snapshot is believed only in its expected shape."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from egress.decide import Enforcement, Reason, Verdict
from egress.decisions import DecidedFlow
from egress.gateway.config import METRICS_LISTEN, GatewayConfig
from egress.gateway.control import WorkerControl, WorkerLink, open_stream, socket_pair
from egress.gateway.metrics import BUCKETS, Latency, MetricsServer, Snapshot, check_listen, parse_listen
from egress.gateway.recorder import RecordReporter
from tests.needs import unavailable
from tests.redis_server import RedisFactory, RedisServer
from tests.test_cli import egress
from tests.waiting import scaled

BLOCK = Verdict(Enforcement.BLOCK, Reason.MINING, "sandboxes.agents.detectors.mining", '{"method":"login"}')
ALLOW = Verdict(Enforcement.ALLOW, None, "sandboxes.agents.allow[0]", "")


def _flow(verdict: Verdict, dport: int = 3333, decide_s: float | None = None) -> DecidedFlow:
    return DecidedFlow(1_700_000_000.0, "agents", "10.77.0.2", 40000, "203.0.113.9", dport, "tcp", "", verdict,
                       decide_s=decide_s)  # fmt: skip


@pytest.fixture
def stopped(redis_factory: RedisFactory) -> Iterator[RedisServer]:
    """A real redis-server, stopped: the records' Redis is down."""
    instance = redis_factory.server()
    instance.kill()
    yield instance
    redis_factory.discard(instance)


async def _worker_snapshot(worker: RecordReporter) -> WorkerLink:
    """A supervisor's link to a worker whose control answers its ping with ``worker``'s counts."""
    mine, theirs = socket_pair()
    control = WorkerControl("proxy-0", stats=lambda: worker.snapshot().to_json())
    link = WorkerLink("proxy-0", mine, payloads=None)  # type: ignore[arg-type]  # no policy is sent here
    reader, writer = await open_stream(theirs)
    serving = asyncio.create_task(control.serve(reader, writer))
    try:
        await asyncio.wait_for(link.status(), scaled(10))
    finally:
        link.close()
        await asyncio.wait_for(serving, scaled(10))
        writer.close()
    return link


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_scrape_while_redis_is_down_shows_decisions_spool_and_failures(stopped: RedisServer, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        unavailable("needs promtool (apt prometheus)")
    gateway = RecordReporter(stopped.url, "gw1", str(tmp_path / "gateway"), "gateway")
    worker = RecordReporter(stopped.url, "gw1", str(tmp_path / "proxy-0"), "proxy-0")
    server: MetricsServer | None = None
    try:
        gateway.report(_flow(BLOCK, dport=53))
        worker.report(_flow(BLOCK, decide_s=0.0003))
        for _ in range(3):
            worker.report(_flow(ALLOW, dport=443, decide_s=0.002))
        assert worker.flush(scaled(30)) and gateway.flush(scaled(30))
        link = asyncio.run(_worker_snapshot(worker))
        assert link.snapshot is not None and link.snapshot.decisions
        sources = [("gateway", gateway.snapshot(), 0.0), ("proxy-0", link.snapshot, 0.5), ("proxy-1", None, 0.0)]
        server = MetricsServer.start("127.0.0.1:0", "", lambda: sources)
        assert server is not None
        response = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=scaled(10))
        assert response.status_code == 200
        text = response.text
    finally:
        if server is not None:
            server.close()
        for reporter in (gateway, worker):
            reporter.close()
            reporter.store.close()
    checked = subprocess.run(
        [promtool, "check", "metrics"], check=False, input=text, capture_output=True, text=True, timeout=scaled(30)
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    samples = _samples(text)

    def sample(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    decisions = "egress_gateway_own_decisions_total"
    assert sample(decisions, worker="gateway", component="dns", action="block", reason="mining") == 1
    assert sample(decisions, worker="proxy-0", component="proxy", action="block", reason="mining") == 1
    assert sample(decisions, worker="proxy-0", component="proxy", action="allow", reason="") == 3
    for worker_name in ("gateway", "proxy-0"):
        assert sample("egress_gateway_own_records_spooled_total", worker=worker_name) == 1
        assert sample("egress_gateway_own_redis_errors_total", worker=worker_name) >= 1
        assert sample("egress_gateway_own_spool_pending_batches", worker=worker_name) >= 1
        assert sample("egress_gateway_own_records_written_total", worker=worker_name) == 0
    assert sample("egress_gateway_decision_seconds_count", worker="proxy-0") == 4
    assert sample("egress_gateway_decision_seconds_bucket", worker="proxy-0", le="0.0005") == 1
    assert sample("egress_gateway_decision_seconds_bucket", worker="proxy-0", le="+Inf") == 4
    assert sample("egress_gateway_worker_snapshot_age_seconds", worker="proxy-1") == float("inf")
    build = [key for key in samples if key[0] == "egress_build_info"]
    assert len(build) == 1 and dict(build[0][1])["version"]


def test_the_default_is_loopback_and_the_sandbox_side_is_refused() -> None:
    host, _ = parse_listen(METRICS_LISTEN)
    assert host == "127.0.0.1"
    config = GatewayConfig("policy.yaml", "eth1", "eth0", "192.0.2.53")
    assert config.metrics_listen == METRICS_LISTEN
    assert check_listen("10.77.0.1", "10.77.0.1")  # the sandbox interface's own address
    assert check_listen("0.0.0.0", "") and check_listen("::", "")
    assert check_listen("10.0.0.5", "10.77.0.1") == ""
    assert MetricsServer.start("10.77.0.1:0", "10.77.0.1", lambda: []) is None


@pytest.mark.parametrize("listen", ["0.0.0.0:9464", "[::]:9464", "localhost:9464", "127.0.0.1:99999", "9464"])
def test_a_bad_metrics_address_is_one_line_naming_the_flag(listen: str) -> None:
    args = ("--policy", "p.yaml", "--sandbox-if", "eth1", "--uplink-if", "eth0", "--upstream-dns", "192.0.2.53")
    result = egress("doctor", *args, "--metrics-listen", listen)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "--metrics-listen" in result.stderr, result.stderr


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {"decisions": {"a|b|c": -1, "x": 3, "p|q|r": True}},
        {"delivery": {"records_written": 1.5, "bogus": 2}},
        {"latency": {"counts": [1, 2], "sum": 1.0}},
        {"latency": {"counts": [0] * (len(BUCKETS) + 1), "sum": float("nan")}},
        {"spool_pending": "many"},
    ],
)
def test_a_workers_snapshot_is_believed_only_in_its_shape(data: object) -> None:
    snapshot = Snapshot.from_json(data)
    assert snapshot.decisions == {} and snapshot.delivery == {}
    assert snapshot.latency_counts == () and snapshot.spool_pending == 0


def test_a_snapshot_round_trips_through_json() -> None:
    latency = Latency()
    for seconds in (0.00005, 0.003, 5.0, float("nan"), -1.0):
        latency.observe(seconds)
    state = latency.state()
    assert sum(state["counts"]) == 3 and state["counts"][-1] == 1
    original = Snapshot({"proxy|block|mining": 2}, {"records_lost": 1}, 4, tuple(state["counts"]), state["sum"])
    assert Snapshot.from_json(original.to_json()) == original


def test_the_supervisor_serves_its_recorders_counts(tmp_path: Path) -> None:
    """The counts are read at each scrape, not once at start."""
    counts = {"n": 0}

    def sources() -> list[tuple[str, Snapshot | None, float]]:
        counts["n"] += 1
        return [("gateway", Snapshot({"dns|block|dns-refused": counts["n"]}), 0.0)]

    server = MetricsServer.start("127.0.0.1:0", "", sources)
    assert server is not None
    try:
        url = f"http://127.0.0.1:{server.port}/metrics"
        first = _samples(httpx.get(url, timeout=scaled(10)).text)
        second = _samples(httpx.get(url, timeout=scaled(10)).text)
        labels = (("action", "block"), ("component", "dns"), ("reason", "dns-refused"), ("worker", "gateway"))
        key = ("egress_gateway_own_decisions_total", labels)
        assert second[key] > first[key]
    finally:
        server.close()


def test_counts_too_large_for_a_reply_never_fail_the_ping() -> None:
    huge = {"decisions": {f"proxy|block|r{index:06d}": 1 for index in range(10_000)}}

    async def ping() -> tuple[str, Snapshot | None]:
        mine, theirs = socket_pair()
        control = WorkerControl("proxy-0", stats=lambda: huge)
        link = WorkerLink("proxy-0", mine, payloads=None)  # type: ignore[arg-type]
        reader, writer = await open_stream(theirs)
        serving = asyncio.create_task(control.serve(reader, writer))
        try:
            digest = await asyncio.wait_for(link.status(), scaled(10))
        finally:
            link.close()
            await asyncio.wait_for(serving, scaled(10))
            writer.close()
        return digest, link.snapshot

    digest, taken = asyncio.run(ping())
    assert digest == "" and taken == Snapshot()
