"""``on_apply: close_forbidden`` in the lab: a policy applied through the fleet (``egress rules apply``) closes the
open connections it would not allow and leaves the others alone. Ground truth is the sandbox's own sockets: a TLS
connection to allowed.lab (relayed by the proxy's front, never re-judged on its own) and a WebSocket to ws.lab
(through mitmproxy), both opened under the lab policy; after a policy without allowed.lab is applied, the first
passes no more bytes, the second still echoes. Without ``on_apply`` (keep, the default) both go on."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator

import pytest

from egress.lab import netns
from egress.lab.demo import GatewayRun, running_gateway
from egress.lab.topology import GATEWAY_SBX_V4
from tests.e2e.test_rules_apply import LAB_POLICY, _apply, _log
from tests.waiting import scaled

pytestmark = [pytest.mark.e2e, pytest.mark.root]

ALLOWED_RULE = "        - {host: allowed.lab, ports: [80, 443]}\n"
CLIENT = """
import base64, os, struct, sys
from egress.lab.sandbox_io import Context, connect, http, recv_exactly, resolve, tls
ctx = Context((sys.argv[1],), False, (), 20.0)
site = tls(ctx, connect(ctx, resolve(ctx, "allowed.lab"), 443), "allowed.lab", verify=False)
ws = connect(ctx, resolve(ctx, "ws.lab"), 80)
key = base64.b64encode(os.urandom(16)).decode()
upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13"}
assert http(ws, "GET", "/", "ws.lab", upgrade).status == 101

def on_site():
    try:
        return f"ok {http(site, 'GET', '/', 'allowed.lab').status}"
    except Exception as error:
        return f"closed {type(error).__name__}"

def on_ws(text):
    data, mask = text.encode(), os.urandom(4)
    try:
        ws.sendall(bytes([0x81, 0x80 | len(data)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))
        head = recv_exactly(ws, 2)
        echoed = recv_exactly(ws, head[1] & 0x7F).decode()
        return "ok" if echoed == text else f"wrong {echoed!r}"
    except Exception as error:
        return f"closed {type(error).__name__}"

for index, _ in enumerate(sys.stdin):
    print(f"site {on_site()} | ws {on_ws(f'round {index}')}", flush=True)
"""
"""A sandbox client holding both connections open; each line on stdin makes one exchange on each and prints how
each went (``ok``, or ``closed`` and why)."""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayRun]:
    policy = tmp_path_factory.mktemp("policy") / "boot.yaml"
    policy.write_text(LAB_POLICY.read_text())
    with running_gateway(f"ecf{os.getpid() % 100000}-", policy, ready_timeout=scaled(90)) as run:
        yield run


class Client:
    def __init__(self, run: GatewayRun) -> None:
        argv = [sys.executable, "-c", CLIENT, GATEWAY_SBX_V4]
        self.process = netns.popen_in(
            run.lab.sandbox_ns, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )

    def exchange(self) -> str:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(b"go\n")
        stdin.flush()
        line = stdout.readline().decode().strip()  # the client's own timeouts (20 s) bound this
        assert line, self.process.stderr.read().decode() if self.process.stderr else "no output"
        return line

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=scaled(60))


@pytest.mark.parametrize("on_apply", ["close_forbidden", "keep"])
def test_an_apply_closes_what_it_forbids_and_only_that(lab: GatewayRun, tmp_path: pathlib.Path, on_apply: str) -> None:
    client = Client(lab)
    try:
        assert client.exchange() == "site ok 200 | ws ok"
        text = LAB_POLICY.read_text()
        assert ALLOWED_RULE in text
        path = tmp_path / "without-allowed.yaml"
        path.write_text(text.replace(ALLOWED_RULE, "") + f"on_apply: {on_apply}\n")
        done = _apply(lab, path)
        assert done.returncode == 0, (done.stdout, done.stderr, _log(lab)[-3000:])
        after = client.exchange()
        if on_apply == "close_forbidden":
            assert after.startswith("site closed") and after.endswith("| ws ok"), after
        else:
            assert after == "site ok 200 | ws ok", after  # keep: connections under way keep their decision
    finally:
        client.close()
        restored = tmp_path / "restored.yaml"
        restored.write_text(LAB_POLICY.read_text() + f"# after {on_apply}\n")
        _apply(lab, restored)
