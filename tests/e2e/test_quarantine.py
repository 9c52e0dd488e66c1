"""Quarantine against the whole gateway in the lab (real nftables, redis-server, mitmproxy): a sandbox whose policy
cuts it off after 3 mining findings plays 3 stratum logins, and then

- a keep-alive HTTP connection to the allowed site, opened before and passing requests until then, stops passing
  bytes (the same connection: the client never reconnects); new connections and DNS fail;
- the webhook (an HTTP server on the gateway namespace's loopback) got exactly one POST naming the sandbox;
- ``egress quarantine list`` and ``events`` show it (the gateway as who);
- a gateway restart keeps it cut off (the table it applies at start holds the sandbox's sources);
- ``egress quarantine release`` lets its traffic pass again, and the release is an event with who released it.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from egress.lab import netns
from egress.lab.demo import GatewayRun, running_gateway
from egress.lab.topology import GATEWAY_SBX_V4
from tests.waiting import eventually, scaled

pytestmark = [pytest.mark.e2e, pytest.mark.root]

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAB_POLICY = ROOT / "rules" / "lab-policy.yaml"
HOOK_PORT = 18555
"""The webhook server's port on the gateway namespace's own loopback."""

HOOK = """
import http.server, sys
out = sys.argv[1]
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with open(out, "ab") as handle:
            handle.write(body.replace(b"\\n", b" ") + b"\\n")
        self.send_response(204)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[2])), Hook).serve_forever()
"""

KEEPALIVE = """
import http.client, sys, time
from egress.lab.sandbox_io import Context, resolve
ctx = Context((sys.argv[1],), False, (), 5.0)
conn = http.client.HTTPConnection(resolve(ctx, "allowed.lab"), 80, timeout=5.0)
while True:
    try:
        conn.request("GET", "/", headers={"Host": "allowed.lab"})
        response = conn.getresponse()
        body = response.read()
    except Exception as error:
        print("stalled", type(error).__name__, flush=True)
        break
    print("ok", conn.sock.getsockname()[1], response.status, len(body), flush=True)
    time.sleep(0.2)
"""
"""One keep-alive connection to the allowed site, a request every 0.2 s; ``ok PORT`` per answer, ``stalled`` once
an answer does not come (5 s)."""


def _egress(run: GatewayRun, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "egress", *args, "--redis-url", run.redis_url]
    return netns.exec_in(run.lab.gateway_ns, argv, timeout=scaled(timeout))


def _jsonl(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert done.returncode == 0, (done.stdout, done.stderr)
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def _log(run: GatewayRun) -> str:
    return (run.lab.state_dir / "logs" / "gateway.log").read_text()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayRun, pathlib.Path]]:
    folder = tmp_path_factory.mktemp("quarantine")
    policy = folder / "policy.yaml"
    rule = f"    quarantine: {{after: 3, within: 600, categories: [mining], webhook: 'http://127.0.0.1:{HOOK_PORT}/hook'}}\n"
    policy.write_text(LAB_POLICY.read_text() + rule)
    hooks = folder / "hooks.jsonl"
    hooks.touch()
    with running_gateway(f"eqr{os.getpid() % 100000}-", policy, ready_timeout=scaled(300)) as run:
        server = netns.popen_in(run.lab.gateway_ns, [sys.executable, "-c", HOOK, str(hooks), str(HOOK_PORT)])
        try:
            yield run, hooks
        finally:
            server.terminate()
            server.wait(timeout=10)


def _allowed(run: GatewayRun) -> str:
    [result] = run.attempts(["allowed_download"])
    return result.outcome


def test_findings_cut_the_sandbox_off_until_released_across_a_restart(
    lab: tuple[GatewayRun, pathlib.Path], tmp_path: pathlib.Path
) -> None:
    run, hooks = lab
    assert _allowed(run) == "ok"
    assert _jsonl(_egress(run, "quarantine", "list", "--json")) == []
    output = tmp_path / "keepalive.txt"
    client = netns.popen_in(
        run.lab.sandbox_ns, [sys.executable, "-c", KEEPALIVE, GATEWAY_SBX_V4], stdout=output.open("wb")
    )
    try:
        eventually(lambda: output.read_text().count("ok ") >= 3, timeout=scaled(60))
        # Three mining findings (the pool's address is allowed by a network rule: the detector is what stops it).
        results = run.attempts(["stratum_3333"] * 3)
        assert [r.outcome for r in results] == ["blocked"] * 3, results
        listed = eventually(lambda: _jsonl(_egress(run, "quarantine", "list", "--json")), timeout=scaled(60))
        assert [entry["sandbox"] for entry in listed] == ["agent"]
        assert listed[0]["gateway"] == f"{run.lab.prefix}gw" and listed[0]["findings"] >= 3

        # The established connection stops passing bytes; it never reconnected.
        eventually(lambda: "stalled" in output.read_text(), timeout=scaled(60))
        client.wait(timeout=scaled(30))
        lines = output.read_text().splitlines()
        ports = {line.split()[1] for line in lines if line.startswith("ok ")}
        assert len(ports) == 1 and lines[-1].startswith("stalled"), lines
    finally:
        if client.poll() is None:
            client.kill()
        client.wait(timeout=10)

    # New connections and DNS fail.
    [download, dns] = run.attempts(["allowed_download", "dns_tunnel"])
    assert download.outcome != "ok", download
    assert dns.outcome != "ok", dns

    # One webhook POST, naming the sandbox.
    posts: list[str] = eventually(lambda: hooks.read_text().splitlines(), timeout=scaled(60))
    assert len(posts) == 1, posts
    body = json.loads(posts[0])
    assert (body["event"], body["sandbox"]) == ("quarantine", "agent")

    events = _jsonl(_egress(run, "quarantine", "events", "--json"))
    assert [(e["event"], e["sandbox"], e["who"]) for e in events] == [("quarantine", "agent", f"{run.lab.prefix}gw")]

    # A restart keeps it cut off.
    run.stop_gateway()
    run.start_gateway()
    listed_set = netns.exec_in(run.lab.gateway_ns, ["nft", "list", "set", "inet", "egress", "quarantine4"])
    assert "10.203.1.0/24" in listed_set.stdout, (listed_set.stdout, listed_set.stderr)
    assert _allowed(run) != "ok"
    assert "QUARANTINE" in _log(run)

    # Release: traffic passes again, the release is an event with who.
    done = _egress(run, "quarantine", "release", "agent")
    assert done.returncode == 0 and "agent released" in done.stdout, (done.stdout, done.stderr)
    eventually(lambda: _allowed(run) == "ok", timeout=scaled(60))
    assert _jsonl(_egress(run, "quarantine", "list", "--json")) == []
    events = _jsonl(_egress(run, "quarantine", "events", "--json"))
    assert [(e["event"], e["sandbox"]) for e in events] == [("release", "agent"), ("quarantine", "agent")]
    assert events[0]["who"].endswith("@cli")
    assert len(hooks.read_text().splitlines()) == 1  # the release calls no webhook; the quarantine called it once
