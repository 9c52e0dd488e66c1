"""Scale out (issue 11): two gateways, each serving a sandbox network of its own (two labs, two prefixes), record
into one real Redis Cluster of 3 masters with a replica each, started in the test's namespace and reached from
both gateway namespaces through `tests.e2e.relay` (every node at the address the Cluster announces).

Each sandbox makes blocked HTTP attempts, each to a Host of its own (so each is exactly one record), until told to
stop; the master holding both sandboxes' records is SIGKILLed while both record. After the replica took over:
every attempt each agent saw blocked is in the Cluster exactly once, naming its gateway and sandbox, and the CLI
(``egress events``) and the API (``/v1/attempts``) return both gateways' records from one query. Ground truth is
what the agents saw (one 403 per attempt), counted against what the queries return.
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from egress.api.app import create_app
from egress.lab import netns
from egress.lab.demo import GatewayRun
from egress.policy_release import release
from egress.record.layout import sandbox_tag
from egress.record.policy_store import PolicyHistory
from egress.record.schema import AttemptRecord
from tests.api import READ, auth, settings
from tests.e2e.relay import Relay
from tests.redis_server import RedisFactory, RedisServer, cluster_ok
from tests.security.harness import Attacker, SecurityLab
from tests.waiting import eventually, scaled

pytestmark = [pytest.mark.e2e, pytest.mark.root]

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAB_READY = 90.0
"""Seconds (scaled) each part of a lab may take to listen (as the other lab tests)."""
BEFORE, AFTER = 25, 25
"""Blocked attempts each sandbox makes before the kill, and at least after the failover."""

LOAD = r"""
import json, os, socket, sys, time
tag, stop, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
n = 0
while not os.path.exists(stop):
    host = "%s-%d.blocked.lab" % (tag, n)
    n += 1
    try:
        with socket.create_connection(("198.18.10.2", 80), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(("GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % host).encode())
            line = s.recv(4096).split(b"\r\n", 1)[0]
        out = "blocked" if b" 403" in line else "answer:%r" % line[:30]
    except Exception as e:
        out = type(e).__name__
    print(json.dumps({"host": host, "out": out}), flush=True)
print("stopped", flush=True)
"""


@dataclass
class Gateway:
    """One lab (its own prefix: namespaces and a sandbox network of its own) with its gateway and its agent."""

    run: GatewayRun
    sandbox: str
    tag: str
    load: Attacker | None = None

    @property
    def name(self) -> str:
        return f"{self.run.lab.prefix}gw"  # what GatewayRun passes as --name

    def attempts(self) -> list[dict[str, str]]:
        assert self.load is not None
        return [json.loads(line) for line in self.load.log().splitlines() if line.startswith("{")]

    def blocked(self) -> int:
        return sum(item["out"] == "blocked" for item in self.attempts())


def _master_port(node: RedisServer, key: str) -> int:
    """The port of the master that serves ``key``'s slot now."""
    slot = int(node.cli("cluster", "keyslot", key).strip())
    for line in node.cli("cluster", "nodes").splitlines():
        fields = line.split()
        if "master" not in fields[2] or "fail" in fields[2]:
            continue
        for span in fields[8:]:
            low, _, high = span.partition("-")
            if not span.startswith("[") and int(low) <= slot <= int(high or low):
                return int(fields[1].split("@")[0].rpartition(":")[2])
    raise AssertionError(f"no master serves slot {slot}")


def _key(sandbox: str) -> str:
    """A key of ``sandbox``'s records (every one shares its hash tag: one slot)."""
    return f"egress:{{{sandbox_tag(sandbox)}}}"


def _same_master_names(node: RedisServer) -> tuple[str, str]:
    """Two sandbox names whose records (keys under the ``{name}`` hash tag) live on the same master."""
    first = _master_port(node, _key("team-a"))
    for index in range(200):
        other = f"team-b{index}"
        if _master_port(node, _key(other)) == first:
            return "team-a", other
    raise AssertionError("no second sandbox name on the same master")


def _policy(directory: pathlib.Path, sandbox: str) -> pathlib.Path:
    """rules/lab-policy.yaml with its sandbox renamed: each gateway's records name a sandbox of their own."""
    text = (ROOT / "rules" / "lab-policy.yaml").read_text()
    assert "\n  agent:\n" in text
    path = directory / f"{sandbox}.yaml"
    path.write_text(text.replace("\n  agent:\n", f"\n  {sandbox}:\n"))
    return path


@pytest.fixture(scope="module")
def cluster(redis_factory: RedisFactory) -> Iterator[list[RedisServer]]:
    nodes = redis_factory.cluster(3, replicas=1)
    yield nodes
    redis_factory.discard(*nodes)


@dataclass
class Scaleout:
    gateways: tuple[Gateway, Gateway]
    victim: RedisServer
    """The master holding both sandboxes' records."""
    seed: RedisServer
    """The node the gateways' URL names (stays up)."""

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.seed.port}"


def _each(action: Callable[[GatewayRun], None], runs: list[GatewayRun]) -> None:
    """``action`` on every run at once (in threads); the first failure is raised once all are done."""
    with concurrent.futures.ThreadPoolExecutor(len(runs) or 1) as pool:
        futures = [pool.submit(action, run) for run in runs]
    for future in futures:
        future.result()


@pytest.fixture(scope="module")
def scaleout(cluster: list[RedisServer], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scaleout]:
    """Both labs up, both gateways recording into the Cluster."""
    names = _same_master_names(cluster[0])
    victim_port = _master_port(cluster[0], _key(names[0]))
    victim = next(node for node in cluster if node.port == victim_port)
    seed = next(node for node in cluster if node is not victim)
    url = f"redis+cluster://127.0.0.1:{seed.port}"
    directory = tmp_path_factory.mktemp("scaleout")
    prefixes = [f"x{side}{os.getpid() % 100000}-" for side in "ab"]
    relay: Relay | None = None
    runs: list[GatewayRun] = []
    try:
        labs = [netns.up(prefix) for prefix in prefixes]
        relay = Relay([lab.gateway_ns for lab in labs], [node.port for node in cluster])
        found = []
        for lab, sandbox, tag in zip(labs, names, ("sa", "sb"), strict=True):
            run = GatewayRun(lab, _policy(directory, sandbox), workers=1, ready_timeout=scaled(LAB_READY), redis=url)
            runs.append(run)
            found.append(Gateway(run, sandbox, tag))
        _each(GatewayRun.start, runs)  # side by side: each waits for its own processes to listen
        yield Scaleout((found[0], found[1]), victim, seed)
    finally:
        _each(GatewayRun.stop, runs)
        if relay is not None:
            relay.close()
        for prefix in prefixes:
            netns.down(prefix)


def _records(url: str) -> list[AttemptRecord]:
    """Every record in the Cluster, as ``egress events --json`` lists them (across all sandboxes and gateways)."""
    argv = [sys.executable, "-m", "egress", "events", "--json", "--limit", "1000000", "--redis-url", url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=scaled(60), check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return [AttemptRecord.from_json(json.loads(line)) for line in done.stdout.splitlines() if line]


def _api_records(url: str, spool: pathlib.Path) -> list[AttemptRecord]:
    """Every record, as the API's ``/v1/attempts`` pages them."""
    found: list[AttemptRecord] = []
    with TestClient(create_app(settings(url, spool_dir=spool))) as client:
        cursor: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": 500} | ({"cursor": cursor} if cursor else {})
            reply = client.get("/v1/attempts", params=params, headers=auth(READ))
            assert reply.status_code == 200, reply.text
            body = reply.json()
            found += [AttemptRecord.from_json(item) for item in body["attempts"]]
            cursor = body["next_cursor"]
            if cursor is None:
                return found


def _failed_over(node: RedisServer) -> bool:
    """The Cluster saw the master fail and is whole again (its replica took the slots)."""
    return "master,fail" in node.cli("cluster", "nodes") and cluster_ok(node)


def _ours(records: list[AttemptRecord], gateway: Gateway) -> list[AttemptRecord]:
    return [record for record in records if record.host.startswith(f"{gateway.tag}-")]


def _judge(records: list[AttemptRecord], gateway: Gateway) -> None:
    """Exactly one record per attempt the agent saw blocked, naming the gateway and sandbox; nothing else."""
    hosts = collections.Counter(record.host for record in _ours(records, gateway))
    attempted = {item["host"] for item in gateway.attempts()}
    twice = sorted(host for host, seen in hosts.items() if seen > 1)
    missing = sorted(attempted - set(hosts), key=lambda host: int(host.split("-")[1].split(".")[0]))
    extra = sorted(set(hosts) - attempted)
    assert not (twice or missing or extra), (
        f"{gateway.name}: twice {twice[:5]}, missing {missing[:5]} of {len(attempted)}, extra {extra[:5]}"
    )
    for record in _ours(records, gateway):
        assert (record.gateway, record.sandbox, record.count) == (gateway.name, gateway.sandbox, 1), record


def test_two_gateways_record_into_one_cluster_through_a_master_failover(
    scaleout: Scaleout, tmp_path: pathlib.Path
) -> None:
    both = scaleout.gateways
    stop = tmp_path / "stop"
    for gateway in both:
        # a generous client timeout: on a busy machine a 403 may be slow, and an attempt must end knowing its fate
        argv = [sys.executable, "-c", LOAD, gateway.tag, str(stop), str(scaled(30))]
        gateway.load = SecurityLab(gateway.run).attacker(f"load-{gateway.tag}", argv, where="sandbox")
    try:
        for gateway in both:
            _wait_blocked(gateway, BEFORE)
        for gateway in both:  # the victim holds records of both sandboxes (once their recorders have written them)
            slot = scaleout.victim.cli("cluster", "keyslot", _key(gateway.sandbox)).strip()
            eventually(functools.partial(_holds_keys, scaleout.victim, slot), timeout=scaled(60), interval=0.2)
        scaleout.victim.kill()  # SIGKILL while both agents make attempts and both gateways record
        eventually(lambda: _failed_over(scaleout.seed), timeout=scaled(60), interval=0.2)
        after = [gateway.blocked() + AFTER for gateway in both]
        for gateway, enough in zip(both, after, strict=True):
            _wait_blocked(gateway, enough)
    finally:
        stop.touch()
        for gateway in both:
            assert gateway.load is not None
            gateway.load.wait_for("stopped", timeout=scaled(90))  # past the last attempt's timeout
    for gateway in both:
        outcomes = collections.Counter(item["out"] for item in gateway.attempts())
        assert set(outcomes) == {"blocked"}, f"{gateway.name}: {outcomes}"  # the data plane never waits on Redis
    # Every attempt once, from both gateways, in one query of the CLI (spooled records arrive when each gateway's
    # store delivers its spool after the failover).
    records = eventually(lambda: _settled(_records(scaleout.url), both), timeout=scaled(120), interval=1.0)
    ids = collections.Counter(record.id for record in records)
    assert not [i for i, seen in ids.items() if seen > 1], "a record id stored twice"
    for gateway in both:
        _judge(records, gateway)
    # The API answers across both gateways with the same records.
    api = _api_records(scaleout.url, tmp_path / "api-spool")
    assert {r.id for g in both for r in _ours(api, g)} == {r.id for g in both for r in _ours(records, g)}
    # One policy for all: a version released into the Cluster reaches both gateways, each reports running it.
    _released_to_both(scaleout.url, both)


def _released_to_both(url: str, both: tuple[Gateway, Gateway]) -> None:
    """Release a new fleet version (the first gateway's file and a line more) and wait until both gateways report
    that they run it, as read back from the Cluster."""
    text = both[0].run.policy.read_text() + "\n# the fleet's version (tests/e2e/test_scaleout.py)\n"
    history = PolicyHistory.from_url(url)
    try:
        released = release(history, text, who="test", source="test_scaleout")
        assert not released.unchanged

        def running() -> bool:
            reports = {report.gateway: report for report in history.gateways()}
            for gateway in both:
                report = reports.get(gateway.name)
                assert report is not None, f"{gateway.name} has not reported: {sorted(reports)}"
                assert (report.state, report.version) == ("applied", released.version.version), report
                assert report.digest == released.version.digest, report
            return True

        eventually(running, timeout=scaled(60), interval=0.5)
    finally:
        history.close()


def _holds_keys(node: RedisServer, slot: str) -> bool:
    count = int(node.cli("cluster", "countkeysinslot", slot))
    assert count > 0, f"no key in slot {slot} on {node.port} yet"
    return True


def _wait_blocked(gateway: Gateway, count: int) -> None:
    def enough() -> bool:
        assert gateway.blocked() >= count, f"{gateway.name}: {gateway.blocked()} blocked attempts so far"
        return True

    eventually(enough, timeout=scaled(120), interval=0.2)


def _settled(records: list[AttemptRecord], both: tuple[Gateway, Gateway]) -> list[AttemptRecord]:
    """``records`` once each gateway's share holds as many distinct hosts as its agent made attempts."""
    for gateway in both:
        have = {record.host for record in _ours(records, gateway)}
        assert len(have) >= len(gateway.attempts()), f"{gateway.name}: {len(have)} of {len(gateway.attempts())}"
    return records
