"""An applied policy cuts the UDP flows it no longer allows, in the lab with the whole gateway: conntrack keeps a
forwarded UDP flow "established", and until issue 12 the forward chain let every established packet through, so
a flow opened under the old policy went on after ``egress rules apply`` removed its rule.

Ground truth is the internet side: sockets in the lab's internet namespace count what arrives. A flow to port
`CUT` (allowed, then removed) and one to port `KEPT` (allowed throughout) share the path, so a packet of the kept
flow sent after the cut flow's packets arriving proves the cut ones had their chance (no sleep-then-assert). The
replies the internet sends on the cut flow after the apply do not reach the sandbox either, and an allowed
download (TCP through the proxy) still works.
"""

from __future__ import annotations

import functools
import os
import pathlib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from egress.capture.nflog import in_netns
from egress.lab import netns
from egress.lab.demo import GatewayRun, running_gateway
from egress.lab.topology import GATEWAY_SBX_V4, TUNNEL_V4
from tests.waiting import eventually, scaled

pytestmark = [pytest.mark.e2e, pytest.mark.root]

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAB_POLICY = ROOT / "rules" / "lab-policy.yaml"
CUT, KEPT = 5001, 5002
RULE = "        - {{cidr: {address}/32, ports: [{port}], protocols: [udp]}}\n"
DOWNLOAD = """
import pathlib, sys
from egress.lab.sandbox_io import Context
from egress.lab.scenarios import run
from egress.lab.topology import Lab
prefix, nameserver, ca = sys.argv[1:]
result = run("allowed_download", Context((nameserver,), False, (Lab(prefix).ca_file, pathlib.Path(ca)), 5.0))
print(result.outcome, result.detail)
"""


def _policy(*ports: int) -> str:
    rules = "".join(RULE.format(address=TUNNEL_V4, port=port) for port in ports)
    return LAB_POLICY.read_text().replace("      networks:\n", "      networks:\n" + rules, 1)


class Side:
    """UDP sockets in one namespace, each keeping what it received (payload, peer) from a thread of its own."""

    def __init__(self) -> None:
        self.got: dict[int, list[tuple[bytes, tuple[str, int]]]] = {}
        self.sockets: dict[int, socket.socket] = {}
        self._lock = threading.Lock()

    def open(self, ns: str, key: int, bind: tuple[str, int], connect: tuple[str, int] | None = None) -> None:
        sock = in_netns(ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        sock.bind(bind)
        if connect is not None:
            sock.connect(connect)
        sock.settimeout(0.2)
        self.sockets[key], self.got[key] = sock, []
        threading.Thread(target=self._read, args=(key, sock), daemon=True).start()

    def _read(self, key: int, sock: socket.socket) -> None:
        while sock.fileno() >= 0:
            try:
                data, peer = sock.recvfrom(2048)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.got[key].append((data, peer))

    def payloads(self, key: int) -> list[bytes]:
        with self._lock:
            return [data for data, _ in self.got[key]]

    def peer(self, key: int) -> tuple[str, int]:
        with self._lock:
            return self.got[key][-1][1]

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()


@pytest.fixture
def lab(tmp_path: pathlib.Path) -> Iterator[GatewayRun]:
    policy = tmp_path / "boot.yaml"
    policy.write_text(_policy(CUT, KEPT))
    with running_gateway(f"eru{os.getpid() % 100000}-", policy, ready_timeout=scaled(90)) as run:
        yield run


def _egress(run: GatewayRun, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "egress", *args, "--redis-url", run.redis_url]
    return netns.exec_in(run.lab.gateway_ns, argv, timeout=scaled(timeout))


def test_an_applied_policy_cuts_the_udp_flows_it_no_longer_allows(lab: GatewayRun, tmp_path: pathlib.Path) -> None:
    internet, sandbox = Side(), Side()
    try:
        for port in (CUT, KEPT):
            internet.open(lab.lab.internet_ns, port, (TUNNEL_V4, port))
            sandbox.open(lab.lab.sandbox_ns, port, ("0.0.0.0", 0), (TUNNEL_V4, port))
        sent = 0

        def send(port: int, label: str) -> bytes:
            nonlocal sent
            sent += 1
            payload = f"{label} {sent}".encode()
            sandbox.sockets[port].send(payload)
            return payload

        # Before: both flows pass, and the internet's replies on them reach the sandbox.
        def arrived(port: int) -> list[bytes]:
            send(port, "before")
            return internet.payloads(port)

        for port in (CUT, KEPT):  # the first datagram may meet an unresolved neighbour: send until one arrives
            eventually(functools.partial(arrived, port), timeout=60, interval=0.2)
        internet.sockets[CUT].sendto(b"reply before", internet.peer(CUT))
        eventually(lambda: b"reply before" in sandbox.payloads(CUT), timeout=60)

        # The apply removes the rule of CUT (one conntrack entry keeps both flows "established").
        applied = tmp_path / "cut.yaml"
        applied.write_text(_policy(KEPT))
        done = _egress(lab, "rules", "apply", str(applied), "--wait", str(scaled(120)))
        assert done.returncode == 0, done.stdout + done.stderr

        after = [send(CUT, "after") for _ in range(20)]
        internet.sockets[CUT].sendto(b"reply after", internet.peer(CUT))
        marker = send(KEPT, "marker")  # same path, sent last: once it arrived, the ones before had their chance
        eventually(lambda: marker in internet.payloads(KEPT), timeout=60, interval=0.2)
        internet.sockets[KEPT].sendto(b"marker back", internet.peer(KEPT))
        eventually(lambda: b"marker back" in sandbox.payloads(KEPT), timeout=60)
        assert [payload for payload in after if payload in internet.payloads(CUT)] == []
        assert b"reply after" not in sandbox.payloads(CUT)

        # TCP through the proxy is as it was: an allowed download works.
        argv = [sys.executable, "-c", DOWNLOAD, lab.lab.prefix, GATEWAY_SBX_V4, str(lab.gateway_ca)]
        download = netns.exec_in(lab.lab.sandbox_ns, argv, timeout=scaled(120))
        assert download.stdout.startswith("ok"), download.stdout + download.stderr
    finally:
        internet.close()
        sandbox.close()
