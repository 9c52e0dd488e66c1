"""``egress rules apply|rollback`` against the whole gateway in the lab: the fleet's version travels through the
lab's Redis to the gateway's follower, which applies it to every component at once.

- ten applies while a client in the sandbox loops allowed downloads (each resolving through the gateway): no
  download fails, and the gateway ends on the last version (the WebSocket rule it toggles says so);
- a version the gateway cannot apply (an IPv6 zone id, written to Redis past the CLI's validation), and a file that
  does not validate: nothing changes anywhere, the drop logger still records under the old sandbox name, and the
  gateway reports why;
- a rollback: the earlier version is in force again.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from egress.lab import netns
from egress.lab.demo import GatewayRun, running_gateway
from egress.lab.topology import GATEWAY_SBX_V4
from egress.record.schema import AttemptRecord
from tests.waiting import eventually, scaled

pytestmark = [pytest.mark.e2e, pytest.mark.root]

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAB_POLICY = ROOT / "rules" / "lab-policy.yaml"
WS_RULE = "        - {host: ws.lab, ports: [80]}\n"
APPLIES = 10
WAIT = 120.0
"""Seconds (scaled) ``rules apply --wait`` gives the gateway to say it runs a version."""

LOOP = """
import dataclasses, json, pathlib, sys
from egress.lab.sandbox_io import Context
from egress.lab.scenarios import run
from egress.lab.topology import Lab
prefix, nameserver, ca, stop = sys.argv[1:]
ctx = Context((nameserver,), False, (Lab(prefix).ca_file, pathlib.Path(ca)), 5.0)
while not pathlib.Path(stop).exists():
    print(json.dumps(dataclasses.asdict(run("allowed_download", ctx))), flush=True)
"""
"""The looping client: allowed downloads one after another (a DNS query and an HTTPS GET each) until told to
stop; one JSON result per line."""


def _egress(run: GatewayRun, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``egress ARGS`` inside the gateway namespace, where the lab's Redis listens."""
    argv = [sys.executable, "-m", "egress", *args, "--redis-url", run.redis_url]
    return netns.exec_in(run.lab.gateway_ns, argv, timeout=scaled(timeout))


def _apply(run: GatewayRun, path: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return _egress(run, "rules", "apply", str(path), "--wait", str(scaled(WAIT)), timeout=WAIT + 60)


def _status(run: GatewayRun) -> dict[str, Any]:
    done = _egress(run, "rules", "status", "--json")
    status: dict[str, Any] = json.loads(done.stdout)
    return status


def _gateway(run: GatewayRun) -> dict[str, Any]:
    [report] = _status(run)["gateways"]
    assert report["gateway"] == f"{run.lab.prefix}gw"
    return dict(report)


def _log(run: GatewayRun) -> str:
    return (run.lab.state_dir / "logs" / "gateway.log").read_text()


def _ws(run: GatewayRun) -> str:
    return run.attempts(["websocket"])[0].outcome


def _records(run: GatewayRun, since: float) -> list[AttemptRecord]:
    argv = [sys.executable, "-m", "egress", "events", "--json", "--limit", "10000", "--redis-url", run.redis_url]
    done = netns.exec_in(run.lab.gateway_ns, argv, timeout=scaled(30))
    found = [AttemptRecord.from_json(json.loads(line)) for line in done.stdout.splitlines() if line]
    return [record for record in found if max(record.ts, record.last_ts) >= since]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayRun]:
    policy = tmp_path_factory.mktemp("policy") / "boot.yaml"
    policy.write_text(LAB_POLICY.read_text())
    with running_gateway(f"era{os.getpid() % 100000}-", policy, ready_timeout=scaled(90)) as run:
        yield run


def test_ten_applies_under_load_fail_no_allowed_request(lab: GatewayRun, tmp_path: pathlib.Path) -> None:
    original = LAB_POLICY.read_text()
    before = _status(lab)["applied"]
    base = 0 if before is None else int(before["version"])  # the module's tests share the lab's history
    stop, results_file = tmp_path / "stop", tmp_path / "results.jsonl"
    client = netns.popen_in(
        lab.lab.sandbox_ns,
        [sys.executable, "-c", LOOP, lab.lab.prefix, GATEWAY_SBX_V4, str(lab.gateway_ca), str(stop)],
        stdout=results_file.open("wb"),  # a file: a pipe nobody reads while the applies run could fill and stall it
        stderr=subprocess.PIPE,
    )
    try:
        texts = []
        for index in range(APPLIES):
            text = original if index % 2 else original.replace(WS_RULE, "")
            texts.append(f"{text}# apply {index}\n")  # every apply a new version
            path = tmp_path / f"v{index}.yaml"
            path.write_text(texts[-1])
            done = _apply(lab, path)
            assert done.returncode == 0, (done.stdout, done.stderr, _log(lab)[-3000:])
            assert f"version {base + index + 1} (" in done.stdout and ": applied, runs version" in done.stdout, (
                done.stdout
            )
    finally:
        stop.touch()
        _, err = client.communicate(timeout=scaled(60))
    results = [json.loads(line) for line in results_file.read_text().splitlines() if line.startswith("{")]
    failed = [result for result in results if result["outcome"] != "ok"]
    assert len(results) >= APPLIES and not failed, (len(results), failed[:5], err.decode()[-2000:])
    report = _gateway(lab)
    assert (report["state"], report["version"]) == ("applied", base + APPLIES), report
    assert _ws(lab) == "ok"  # the last version (index 9: odd) has the WebSocket rule
    assert "Exception in callback" not in _log(lab) and "Traceback" not in _log(lab)


_BROKEN = """
import hashlib, sys
from egress.record.policy_store import PolicyHistory
text = sys.stdin.read()
history = PolicyHistory.from_url(sys.argv[1])
print(history.record(text, hashlib.sha256(text.encode()).hexdigest(), "test", "past-validation").version)
"""


def test_a_version_the_gateway_cannot_apply_changes_nothing_anywhere(lab: GatewayRun, tmp_path: pathlib.Path) -> None:
    without_ws = LAB_POLICY.read_text().replace(WS_RULE, "")
    good = tmp_path / "good.yaml"
    good.write_text(without_ws + "# known good\n")
    assert _apply(lab, good).returncode == 0
    known = _gateway(lab)
    assert known["state"] == "applied" and _ws(lab) != "ok"
    # Renamed and with a WebSocket rule: if any component took it, the drop logger would record under "renamed"
    # or the WebSocket would pass. The zone id makes nft refuse the table.
    broken = LAB_POLICY.read_text().replace("\n  agent:\n", "\n  renamed:\n")
    broken = broken.replace('"fd00:203:1::/64"]', '"fd00:203:1::/64", "fe80::1%vlan42/128"]')
    assert "%vlan42" in broken and "renamed" in broken
    since = time.time()
    argv = [sys.executable, "-c", _BROKEN, lab.redis_url]
    done = netns.exec_in(lab.lab.gateway_ns, argv, input=broken, timeout=scaled(30))
    assert done.returncode == 0, done.stderr
    wanted = int(done.stdout)

    def reported() -> dict[str, Any]:
        report = _gateway(lab)
        assert report["wanted"] == wanted, report
        return report

    report = eventually(reported, timeout=60, interval=0.3)
    # Refused by nft at prepare, or, once the loader knows zone ids, by the gateway's own validation: either way
    # the gateway names the zone id and changes nothing.
    assert report["state"] == "failed" and "vlan42" in report["error"], report
    assert (report["version"], report["digest"]) == (known["version"], known["digest"])  # still the old one
    assert _ws(lab) != "ok"
    [quic] = lab.attempts(["quic"])  # UDP: dropped by nftables, judged by the drop logger

    def dropped() -> list[AttemptRecord]:
        drops = [r for r in _records(lab, since) if r.transport == "udp" and r.reason == "firewall-drop"]
        assert drops, quic
        return drops

    assert {record.sandbox for record in eventually(dropped, timeout=60, interval=0.3)} == {"agent"}
    assert "Exception in callback" not in _log(lab) and "Traceback" not in _log(lab)
    # A file that does not validate is not stored at all.
    bad = tmp_path / "bad.yaml"
    bad.write_text(without_ws + "surprise: true\n")
    refused = _apply(lab, bad)
    assert refused.returncode == 1 and "surprise" in refused.stderr, refused
    assert _status(lab)["applied"]["version"] == wanted


def test_rollback_brings_the_earlier_version_back(lab: GatewayRun, tmp_path: pathlib.Path) -> None:
    original = LAB_POLICY.read_text()
    with_ws, without_ws = tmp_path / "with.yaml", tmp_path / "without.yaml"
    with_ws.write_text(original + "# rollback test: with\n")
    without_ws.write_text(original.replace(WS_RULE, "") + "# rollback test: without\n")
    assert _apply(lab, with_ws).returncode == 0
    assert _apply(lab, without_ws).returncode == 0
    assert _ws(lab) != "ok"
    done = _egress(lab, "rules", "rollback", "--wait", str(scaled(WAIT)), timeout=WAIT + 60)
    assert done.returncode == 0, (done.stdout, done.stderr)
    status = _status(lab)
    assert status["applied"]["rollback_of"] == status["applied"]["version"] - 2
    assert _gateway(lab)["version"] == status["applied"]["version"]
    assert _ws(lab) == "ok"
    history = _egress(lab, "rules", "history")
    assert "rollback to" in history.stdout, history.stdout
