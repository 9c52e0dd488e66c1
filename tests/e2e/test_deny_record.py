"""The record named in a deny reason, in the lab: a sandbox's request to a host no rule allows gets the gateway's
403, whose body names a record id, and that id fetches the record through the API (``GET /v1/attempts/{id}``),
with every attempt counted into the records the 403s named."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from egress.lab import netns
from egress.lab.topology import server
from tests.e2e.test_gateway import LAB_POLICY, _lab
from tests.waiting import eventually, scaled

pytestmark = [pytest.mark.e2e, pytest.mark.root]

ATTEMPTS = 3
_ASK = """
import socket, sys
for _ in range(int(sys.argv[2])):
    with socket.create_connection((sys.argv[1], 80), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\\r\\nHost: blocked.lab\\r\\nConnection: close\\r\\n\\r\\n")
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


def test_the_403_names_a_record_the_api_returns() -> None:
    with _lab("d", LAB_POLICY) as run:
        blocked = server("blocked").v4
        asked = netns.exec_in(
            run.lab.sandbox_ns, [sys.executable, "-c", _ASK, blocked, str(ATTEMPTS)], timeout=scaled(60)
        )
        answers = [part for part in asked.stdout.split("=====") if part.strip()]
        assert len(answers) == ATTEMPTS, asked.stdout + asked.stderr
        ids = []
        for answer in answers:
            assert answer.lstrip().startswith("HTTP/1.1 403"), answer
            header = re.search(r"(?im)^x-egress-record: (\w{26})$", answer)
            body = re.search(r"(?m)^record: (\w{26})$", answer)
            assert header is not None and body is not None and header.group(1) == body.group(1), answer
            ids.append(body.group(1))
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
