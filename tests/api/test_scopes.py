"""Tokens scoped to sandboxes (egress.api.auth, ``sandboxes:`` in the tokens file), against a real redis-server: a
harness token reports actions and reads records of its own sandboxes only, and is refused the fleet-wide routes;
an action's command is text everywhere it is shown (the API's JSON, the CLI's table, the dashboard's script)."""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from egress.api.app import create_app
from egress.api.auth import Role, Token, digest, parse_tokens
from egress.api.routes.dashboard import STATIC
from egress.api.settings import Settings
from egress.cli import main
from egress.policy.yamlnodes import RulesError
from egress.record.store import RecordStore
from tests.api import ADMIN, TOKENS, auth, seed_attempts, settings
from tests.redis_server import RedisServer

HARNESS = "harness-agents-0123456789abcdef"
SCOPED = Token("harness-agents", digest(HARNESS), frozenset({Role.REPORT, Role.READ}), frozenset({"agents"}))
UNSAFE = '<img src=x onerror="alert(1)"> [bold red]not markup[/bold red]'


def test_the_tokens_file_takes_sandboxes_and_says_what_is_wrong() -> None:
    text = "tokens:\n  - name: h\n    token: 0123456789abcdef0\n    roles: [report]\n    sandboxes: [a, b]\n"
    (token,) = parse_tokens(text, "tokens.yaml")
    assert token.sandboxes == frozenset({"a", "b"}) and token.sees("a") and not token.sees("c")
    (unscoped,) = parse_tokens(text.replace("    sandboxes: [a, b]\n", ""), "tokens.yaml")
    assert unscoped.sandboxes is None and unscoped.sees("anything")
    for bad, message in (("[]", "is empty"), ("[a, '']", "not a sandbox name"), ("a", "")):
        with pytest.raises(RulesError) as raised:
            parse_tokens(text.replace("[a, b]", bad), "tokens.yaml")
        assert "tokens[0].sandboxes" in str(raised.value) and message in str(raised.value), str(raised.value)


def test_the_scope_travels_to_worker_processes() -> None:
    original = Settings(tokens=(SCOPED, *TOKENS))
    assert Settings.from_env(original.to_env()).tokens == original.tokens


@pytest.fixture(scope="module")
def client(redis_server: RedisServer) -> Iterator[TestClient]:
    redis_server.flush()
    with tempfile.TemporaryDirectory(prefix="egt-api-scopes-") as spool:
        writer = RecordStore(redis_server.url, Path(spool), "gw1", retry_interval=0.0)
        writer.write(seed_attempts(time.time()))
        writer.close()
    with TestClient(create_app(settings(redis_server.url, tokens=(SCOPED, *TOKENS)))) as test_client:
        yield test_client


def _action(sandbox: str, action_id: str, command: str = "ls") -> dict[str, Any]:
    now = time.time()
    return {"sandbox": sandbox, "id": action_id, "kind": "shell_command", "command": command, "start": now - 1}


def test_a_scoped_token_reports_for_its_sandboxes_only(client: TestClient) -> None:
    mine = client.post("/v1/actions", json={"actions": [_action("agents", "scoped-1")]}, headers=auth(HARNESS))
    assert mine.status_code == 200 and mine.json() == {"accepted": 1}
    batch = {"actions": [_action("agents", "scoped-2"), _action("builders", "scoped-3")]}
    theirs = client.post("/v1/actions", json=batch, headers=auth(HARNESS))
    assert theirs.status_code == 403 and theirs.json()["error"]["field"] == "actions[1].sandbox"
    items = client.get("/v1/sandboxes/agents/timeline", headers=auth(ADMIN)).json()["items"]
    ids = {item["action"]["id"] for item in items if item["type"] == "action"}
    assert "scoped-1" in ids and "scoped-2" not in ids, "a refused batch stored nothing"


@pytest.mark.parametrize(
    ("path", "status", "field"),
    [
        ("/v1/attempts?sandbox=agents", 200, None),
        ("/v1/attempts", 200, None),  # naming none: its whole scope (tests/api/test_scope_reads.py)
        ("/v1/attempts?sandbox=builders", 403, "sandbox"),
        ("/v1/sandboxes/agents/timeline", 200, None),
        ("/v1/sandboxes/builders/timeline", 403, "sandbox"),
        ("/v1/follow?sandbox=builders", 403, "sandbox"),
        ("/v1/stats", 200, None),  # counts of its own sandboxes only
        ("/v1/stats/series", 200, None),
        ("/v1/flows", 200, None),
        ("/v1/flows?sandbox=builders", 403, "sandbox"),
        ("/metrics", 403, None),
        ("/v1/policy", 403, None),
        ("/v1/policy/history", 403, None),
        ("/v1/quarantine", 403, None),  # every sandbox's quarantine state and steps
    ],
)
def test_a_scoped_token_reads_its_sandboxes_only(client: TestClient, path: str, status: int, field: str | None) -> None:
    response = client.get(path, headers=auth(HARNESS))
    assert response.status_code == status, response.text
    if status == 200:
        body = response.json()
        for attempt in body.get("attempts", []):
            assert attempt["sandbox"] == "agents"
    else:
        assert response.json()["error"]["field"] == field


def test_another_sandboxes_attempt_and_name_are_hidden(client: TestClient) -> None:
    every = client.get("/v1/attempts", headers=auth(ADMIN)).json()["attempts"]
    by_sandbox = {attempt["sandbox"]: attempt["id"] for attempt in every}
    assert client.get(f"/v1/attempts/{by_sandbox['agents']}", headers=auth(HARNESS)).status_code == 200
    assert client.get(f"/v1/attempts/{by_sandbox['builders']}", headers=auth(HARNESS)).status_code == 404
    assert client.get("/v1/sandboxes", headers=auth(HARNESS)).json() == {"sandboxes": ["agents"]}
    assert set(client.get("/v1/sandboxes", headers=auth(ADMIN)).json()["sandboxes"]) >= {"agents", "builders"}


def test_a_command_is_text_in_the_api_and_the_cli(client: TestClient, redis_server: RedisServer) -> None:
    posted = client.post("/v1/actions", json={"actions": [_action("agents", "x<b>1</b>", UNSAFE)]}, headers=auth(ADMIN))
    assert posted.status_code == 200
    response = client.get("/v1/sandboxes/agents/timeline", headers=auth(ADMIN))
    assert response.headers["content-type"] == "application/json"
    commands = [item["action"]["command"] for item in response.json()["items"] if item["type"] == "action"]
    assert UNSAFE in commands
    env = {**os.environ, "COLUMNS": "400"}
    result = CliRunner(env=env).invoke(main, ["timeline", "agents", "--redis-url", redis_server.url])
    assert result.exit_code == 0, result.output
    flat = re.sub(r"\s+", " ", result.output)
    assert "[bold red]not markup[/bold red]" in flat and '<img src=x onerror="alert(1)">' in flat, result.output
    assert "x<b>1</b>" in flat


def test_the_dashboard_script_never_parses_data_as_html() -> None:
    script = (STATIC / "dashboard.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, f"dashboard.js uses {sink}: data must go in as text (textContent)"
