"""``egress rules replay`` (egress/cli_replay.py): records written by the gateway's recorder into a real
redis-server, and captures from pcaps/, decided again under a proposed policy."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from egress.cli import main
from egress.decide import decide_dns, decide_finding, decide_tls
from egress.decisions import DecidedFlow
from egress.detect.base import Category, Finding
from egress.gateway.recorder import RecordReporter
from egress.policy.loader import parse_policy
from egress.policy_release import digest
from egress.record.action_store import write_actions
from egress.record.actions import ActionRecord
from egress.record.policy_store import PolicyHistory
from egress.record.store import RecordStore
from tests.redis_server import RedisServer

PCAPS = Path(__file__).resolve().parents[1] / "pcaps"
CURRENT = """version: 1
sandboxes:
  agents:
    sources: [10.1.0.0/24]
    allow:
      hosts: [pypi.org:443]
"""
PROPOSED = """version: 1
sandboxes:
  agents:
    sources: [10.1.0.0/24]
    allow:
      hosts: [pypi.org:443, api.example.com:443]
"""
LAB_CURRENT = """version: 1
sandboxes:
  lab:
    sources: [10.203.1.0/24]
    allow:
      hosts: [allowed.lab:443, ws.lab:80]
"""
LAB_PROPOSED = """version: 1
sandboxes:
  lab:
    sources: [10.203.1.0/24]
    allow:
      hosts: [ws.lab:80, blocked.lab:443]
"""
MINING = Finding(Category.MINING, "stratum-v1", "stratum", '{"method":"mining.subscribe"}')


def _egress(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def _files(tmp_path: Path, current: str, proposed: str) -> tuple[str, str]:
    (tmp_path / "current.yaml").write_text(current)
    (tmp_path / "proposed.yaml").write_text(proposed)
    return str(tmp_path / "current.yaml"), str(tmp_path / "proposed.yaml")


@pytest.fixture
def url(redis_server: RedisServer) -> str:
    redis_server.flush()
    return redis_server.url


def _record(url: str, tmp_path: Path, now: float) -> None:
    """Three decisions of the current policy through the recorder (the writer the gateway uses), twice the TLS
    one (aggregated into one record), and the agent's action they belong to."""
    (sandbox,) = parse_policy(CURRENT).sandboxes
    reporter = RecordReporter(url, "gw", str(tmp_path / "spool"), "proxy-0")
    tls = decide_tls(sandbox, "203.0.113.9", 443, "api.example.com", False)
    for sport in (40000, 40001):
        reporter.report(
            DecidedFlow(now, "agents", "10.1.0.5", sport, "203.0.113.9", 443, "tcp", "api.example.com", tls)
        )
    dns = decide_dns(sandbox, "api.example.com", None)
    reporter.report(DecidedFlow(now, "agents", "10.1.0.5", 5353, "10.1.0.1", 53, "udp", "api.example.com", dns))
    mining = decide_finding(sandbox, MINING)
    reporter.report(DecidedFlow(now + 1, "agents", "10.1.0.5", 40002, "203.0.113.7", 3333, "tcp", "", mining))
    assert reporter.flush(timeout=60)
    reporter.close()
    store = RecordStore(url, tmp_path / "reader-spool", "reader")
    action = ActionRecord("agents", "call-7", "shell_command", "pip install api-client", now - 1, now + 5)
    write_actions(store, [action])
    store.close()


def test_recorded_attempts_flip_under_the_proposed_policy(url: str, tmp_path: Path) -> None:
    _record(url, tmp_path, time.time())
    current, proposed = _files(tmp_path, CURRENT, PROPOSED)
    code, out, err = _egress("rules", "replay", proposed, "--current", current, "--redis-url", url, "-o", "json")
    assert code == 1, err
    rows = json.loads(out)
    assert sorted((row["kind"], row["change"]) for row in rows) == [("dns", "unblocked"), ("tls", "unblocked")]
    tls = next(row for row in rows if row["kind"] == "tls")
    assert tls["count"] == 2 and tls["record_id"]
    assert tls["condition"].startswith("if the gateway resolved api.example.com to 203.0.113.9")
    assert [a["id"] for a in tls["actions"]] == ["call-7"]
    assert "3 replayed: 2 unblocked, 0 blocked, 0 changed, 1 same, 0 unknown" in err


def test_without_a_current_policy_the_applied_one_is_compared(url: str, tmp_path: Path) -> None:
    _record(url, tmp_path, time.time())
    history = PolicyHistory.from_url(url)
    history.record(PROPOSED, digest(PROPOSED), "test", "test")  # the proposed one is already applied
    history.close()
    _, proposed = _files(tmp_path, CURRENT, PROPOSED)
    code, out, err = _egress("rules", "replay", proposed, "--redis-url", url, "--all")
    assert code == 0, err
    assert "compared with: the current policy" in err and "3 same" in err
    assert out.count(": SAME ") == 3
    code, _, err = _egress("rules", "replay", proposed, "--redis-url", url, "--sandbox", "others", "--all")
    assert code == 0 and "0 replayed" in err


def test_replay_of_a_capture_lists_what_the_new_policy_cuts_and_opens(tmp_path: Path) -> None:
    current, proposed = _files(tmp_path, LAB_CURRENT, LAB_PROPOSED)
    code, out, err = _egress(
        "rules", "replay", proposed, "--current", current, "--capture", str(PCAPS / "allowed_download.pcap"),
        "-o", "jsonl",
    )  # fmt: skip
    assert code == 1, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(row["kind"], row["host"], row["change"]) for row in rows] == [
        ("dns", "allowed.lab", "blocked"),
        ("tls", "allowed.lab", "blocked"),
    ]
    code, out, err = _egress(
        "rules", "replay", proposed, "--current", current, "--capture", str(PCAPS / "disallowed_site.pcap")
    )
    assert code == 1 and "UNBLOCKED block (dns-refused) -> allow" in out
    code, out, err = _egress(
        "rules", "replay", proposed, "--current", current, "--capture", str(PCAPS / "stratum_3333.pcap"), "--all"
    )
    assert code == 0 and "block (mining) -> block (mining)" in out


def test_a_capture_needs_a_current_policy(tmp_path: Path) -> None:
    _, proposed = _files(tmp_path, LAB_CURRENT, LAB_PROPOSED)
    code, _, err = _egress(
        "rules", "replay", proposed, "--capture", str(PCAPS / "websocket.pcap"), "--redis-url", "redis://127.0.0.1:1"
    )
    assert code == 2 and "--current" in err


def test_an_invalid_proposed_policy_is_refused_with_its_problems(tmp_path: Path) -> None:
    _, proposed = _files(tmp_path, LAB_CURRENT, "version: 1\nsandboxes: {x: {sources: [nope]}}\n")
    code, _, err = _egress("rules", "replay", proposed, "--capture", str(PCAPS / "websocket.pcap"))
    assert code == 2 and "proposed.yaml:" in err
