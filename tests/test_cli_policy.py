"""``egress rules apply|history|rollback|status`` (egress/cli_policy.py) against a real redis-server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from egress.cli import main
from egress.record.policy_store import GatewayReport, PolicyHistory
from tests.redis_server import RedisServer, nowhere_url

POLICY = """version: 1
sandboxes:
  {name}:
    sources: [10.0.0.0/8]
    mode: enforce
    allow:
      hosts: [allowed.test:443]
"""


@pytest.fixture
def url(redis_server: RedisServer) -> str:
    redis_server.flush()
    return redis_server.url


@pytest.fixture
def history(url: str) -> Iterator[PolicyHistory]:
    made = PolicyHistory.from_url(url)
    yield made
    made.close()


def _egress(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def _file(tmp_path: Path, name: str, extra: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(POLICY.format(name=name) + extra)
    return path


def test_apply_history_rollback(tmp_path: Path, url: str, history: PolicyHistory) -> None:
    for name in ("one", "two"):
        code, out, err = _egress("rules", "apply", str(_file(tmp_path, name)), "--redis-url", url)
        assert code == 0, err
    assert out.startswith("version 2 (sha256:") and out.rstrip().endswith("applied")
    code, out, _ = _egress("rules", "apply", str(_file(tmp_path, "two")), "--redis-url", url)
    assert code == 0 and "already applied" in out
    code, out, _ = _egress("rules", "history", "--redis-url", url)
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("*    2") and lines[1].startswith("     1")
    assert "two.yaml" in lines[0]
    code, out, _ = _egress("rules", "rollback", "--redis-url", url)
    assert code == 0 and out.startswith("version 3 ")
    assert history.text(3) == POLICY.format(name="one")
    code, out, _ = _egress("rules", "history", "--redis-url", url, "--json")
    assert json.loads(out.splitlines()[0])["rollback_of"] == 1
    code, out, _ = _egress("rules", "history", "--redis-url", url, "--show", "2")
    assert code == 0 and out == POLICY.format(name="two")
    code, _, err = _egress("rules", "rollback", "7", "--redis-url", url)
    assert code == 1 and "version 7 is not in the history" in err


def test_a_file_that_does_not_validate_changes_nothing(tmp_path: Path, url: str, history: PolicyHistory) -> None:
    code, _, err = _egress("rules", "apply", str(_file(tmp_path, "bad", "surprise: true\n")), "--redis-url", url)
    assert code == 1 and "surprise" in err and "nothing changed" in err
    assert history.applied() is None


def test_rollback_without_an_earlier_version(url: str) -> None:
    code, _, err = _egress("rules", "rollback", "--redis-url", url)
    assert code == 1 and "no earlier version" in err


def test_status_says_what_each_gateway_runs(tmp_path: Path, url: str, history: PolicyHistory) -> None:
    assert _egress("rules", "apply", str(_file(tmp_path, "one")), "--redis-url", url)[0] == 0
    applied = history.applied()
    assert applied is not None
    history.report(GatewayReport("gw-1", "applied", applied.digest, 1, 1.0, wanted=1))
    code, out, _ = _egress("rules", "status", "--redis-url", url)
    assert code == 0 and "gw-1: applied, runs version 1" in out
    history.report(GatewayReport("gw-2", "failed", "00" * 32, None, 2.0, wanted=1, error="refused by nftables"))
    code, out, _ = _egress("rules", "status", "--redis-url", url, "--json")
    assert code == 1  # a gateway runs something else
    assert [g["state"] for g in json.loads(out)["gateways"]] == ["applied", "failed"]


def test_apply_wait_fails_when_a_gateway_cannot_apply(tmp_path: Path, url: str, history: PolicyHistory) -> None:
    history.report(GatewayReport("gw-1", "failed", "00" * 32, None, 2.0, wanted=1, error="refused by nftables"))
    code, out, err = _egress("rules", "apply", str(_file(tmp_path, "one")), "--redis-url", url, "--wait", "5")
    assert code == 1 and "could not apply it" in err and "refused by nftables" in out


def test_redis_away_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = _egress("rules", "apply", str(_file(tmp_path, "one")), "--redis-url", nowhere_url())
    assert code == 2 and "did not answer" in err and "nothing changed" in err
