"""Records in the lab: the record named in a deny reason (a sandbox's request to a host no rule allows gets the
gateway's 403, whose body names a record id, and that id fetches the record through the API, ``GET
/v1/attempts/{id}``, with every attempt counted into the records the 403s named); and the recorded attempts
replayed under a proposed policy (``egress rules replay``)."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

from egress.lab import netns
from egress.lab.demo import GatewayRun
from egress.lab.topology import server
from tests.e2e.test_gateway import LAB_POLICY, _lab
from tests.waiting import eventually, scaled

pytestmark = [pytest.mark.e2e, pytest.mark.root]

ATTEMPTS = 3
_ASK = """
import socket, sys
for _ in range(int(sys.argv[2])):
    with socket.create_connection((sys.argv[1], 80), timeout=10) as sock:
        sock.sendall(f"GET / HTTP/1.1\\r\\nHost: {sys.argv[3]}\\r\\nConnection: close\\r\\n\\r\\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    print(data.decode("utf-8", "replace").replace("\\r\\n", "\\n"))
    print("=====")
"""
_GET = """
import sys, urllib.error, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())
except urllib.error.HTTPError as error:
    print(f"HTTP {error.code}")
"""


@pytest.fixture(scope="module")
def run() -> Iterator[GatewayRun]:
    with _lab("d", LAB_POLICY) as lab:
        yield lab


def _ask(run: GatewayRun, host: str) -> list[str]:
    """Three requests naming ``host`` to blocked.lab's address from the sandbox; the record id each 403 named
    (each test its own host: records of one test's attempts never count into another's)."""
    blocked = server("blocked").v4
    argv = [sys.executable, "-c", _ASK, blocked, str(ATTEMPTS), host]
    asked = netns.exec_in(run.lab.sandbox_ns, argv, timeout=scaled(60))
    answers = [part for part in asked.stdout.split("=====") if part.strip()]
    assert len(answers) == ATTEMPTS, asked.stdout + asked.stderr
    ids = []
    for answer in answers:
        assert answer.lstrip().startswith("HTTP/1.1 403"), answer
        header = re.search(r"(?im)^x-egress-record: (\w{26})$", answer)
        body = re.search(r"(?m)^record: (\w{26})$", answer)
        assert header is not None and body is not None and header.group(1) == body.group(1), answer
        ids.append(body.group(1))
    return ids


def test_recorded_attempts_replayed_under_a_policy_that_allows_them(run: GatewayRun, tmp_path: pathlib.Path) -> None:
    ids = _ask(run, "replay.lab")
    proposed = tmp_path / "proposed.yaml"
    proposed.write_text(
        LAB_POLICY.read_text().replace("{host: ws.lab, ports: [80]}", "{host: replay.lab, ports: [80]}")
    )
    argv = [sys.executable, "-m", "egress", "rules", "replay", str(proposed), "--current", str(LAB_POLICY),
            "--redis-url", run.redis_url, "-o", "json"]  # fmt: skip

    def replayed() -> bool:
        done = netns.exec_in(run.lab.gateway_ns, argv, timeout=scaled(60))
        assert done.returncode == 1, done.stdout + done.stderr  # something flips
        rows = [row for row in json.loads(done.stdout) if row["record_id"] in ids]
        assert rows, done.stdout
        for row in rows:
            assert (row["kind"], row["host"], row["change"]) == ("http", "replay.lab", "unblocked"), row
            assert row["condition"].startswith("if the gateway resolved replay.lab to "), row
        return True

    eventually(replayed, timeout=60, interval=0.5)


def test_the_403_names_a_record_the_api_returns(run: GatewayRun) -> None:
    blocked = server("blocked").v4
    ids = _ask(run, "blocked.lab")
    api = netns.popen_in(
        run.lab.gateway_ns,
        [sys.executable, "-m", "egress", "api", "serve", "--lab", "--listen", "127.0.0.1:8091",
         "--redis-url", run.redis_url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        counts: dict[str, int] = {}

        def fetched() -> bool:
            for record_id in sorted(set(ids)):
                url = f"http://127.0.0.1:8091/v1/attempts/{record_id}"
                text = netns.exec_in(run.lab.gateway_ns, [sys.executable, "-c", _GET, url], timeout=scaled(30))
                assert text.stdout.startswith("{"), text.stdout + text.stderr
                record = json.loads(text.stdout)
                record = record.get("attempt", record)
                assert record["id"] == record_id and record["reason"] == "not-allowlisted", record
                assert record["host"] == "blocked.lab" and record["dst"] == blocked, record
                counts[record_id] = record["count"]
            # each 403 named the record its attempt was counted into: a repeat within a second names the
            # same one, so the named records hold every attempt between them
            assert sum(counts.values()) == ATTEMPTS, counts
            return True

        eventually(fetched, timeout=60, interval=0.5)
    finally:
        api.terminate()
        api.wait(timeout=scaled(10))
