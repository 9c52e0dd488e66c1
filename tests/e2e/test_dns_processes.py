"""Two resolver processes in the lab (``gateway run --dns-processes 2``): two sandboxes behind the lab's sandbox
link, ``agent`` (process 0: the supervisor's own resolver) and ``second`` (process 1: `egress.gateway.dnsworker`),
as `egress.policy.partition` places them. Judged by the decision lines in the gateway's log, which name the
process that wrote them (``gateway[pid]`` or ``dns[pid]``):

- each sandbox's queries, UDP and TCP, are all answered by its own process, and each process's tunnel tracker
  finds the tunnel its sandbox runs (``dns-tunnel``): it saw all of that sandbox's queries;
- the second process killed: the supervisor treats it as any component's death (the lockdown, a new process),
  and the sandbox's DNS is answered again afterwards, by the new process.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import yaml

from egress.lab import netns
from egress.lab.demo import GatewayRun, running_gateway
from egress.lab.topology import SANDBOX_V4
from egress.policy.partition import process_of
from tests.e2e.test_gateway import LAB_POLICY, prefix
from tests.waiting import eventually, scaled

pytestmark = [pytest.mark.e2e, pytest.mark.root]

SECOND_V4 = "10.203.1.130"
"""The second sandbox's address, added to the lab sandbox's link (its sources: the link's upper half)."""
DNS_PORT_2 = 5354
_DECISION = re.compile(r" (gateway|dns)\[(\d+)\] \w+ decision (\{.*\})$")

# Run in the sandbox with (source address, tag): a query for allowed.lab over UDP and over TCP, then encoded
# names under t.lab as a tunnel sends them; prints what each came to.
_ASK = r"""
import base64, json, os, socket, struct, sys
from egress.detect import dns
source, tag = sys.argv[1], sys.argv[2]
def udp(name, qtype=1):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0)); s.settimeout(2)
        s.sendto(dns.build_query(7, name, qtype), ("10.203.1.1", 53))
        try:
            return dns.parse(s.recv(4096)).rcode
        except OSError as exc:
            return type(exc).__name__
def tcp(name):
    query = dns.build_query(8, name, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((source, 0)); s.settimeout(5); s.connect(("10.203.1.1", 53))
        s.sendall(struct.pack(">H", len(query)) + query)
        size = struct.unpack(">H", s.recv(2))[0]
        data = b""
        while len(data) < size:
            data += s.recv(size - len(data))
        return dns.parse(data).rcode
out = {"udp": udp("allowed.lab")}
if tag == "all":
    out["tcp"] = tcp("allowed.lab")
    out["tunnel"] = [udp(base64.b32encode(os.urandom(30)).decode().rstrip("=").lower() + ".%d.t.lab" % n, 16)
                     for n in range(10)]
print(json.dumps(out))
"""


def _policy(path: pathlib.Path) -> pathlib.Path:
    """The lab's policy with its sandbox link split between ``agent`` and ``second`` (same rules, each pinned to
    its addresses as the policy requires of two sandboxes on one link)."""
    policy = yaml.safe_load(LAB_POLICY.read_text())
    agent = policy["sandboxes"]["agent"]
    agent["link_pins_sources"] = True
    second = json.loads(json.dumps(agent))
    agent["sources"] = ["10.203.1.0/25", "fd00:203:1::/64"]
    second["sources"] = ["10.203.1.128/25"]
    policy["sandboxes"]["second"] = second
    path.write_text(yaml.safe_dump(policy))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayRun]:
    assert (process_of("agent", 2), process_of("second", 2)) == (0, 1)  # the test's premise
    policy = _policy(tmp_path_factory.mktemp("dnsprocs") / "policy.yaml")
    with running_gateway(prefix("d"), policy, ready_timeout=scaled(90), extra_args=("--dns-processes", "2")) as run:
        lab = run.lab
        netns.exec_in(lab.sandbox_ns, ["ip", "addr", "add", f"{SECOND_V4}/24", "dev", lab.sandbox_if], timeout=10)
        eventually(lambda: _listening(run, DNS_PORT_2), timeout=60)
        yield run


def _listening(run: GatewayRun, port: int) -> bool:
    done = netns.exec_in(run.lab.gateway_ns, ["ss", "-Hlnu", f"sport = :{port}"], timeout=10)
    assert done.stdout.strip(), f"nothing listens on UDP {port}"
    return True


def _ask(run: GatewayRun, source: str, tag: str) -> dict[str, object]:
    done = netns.exec_in(run.lab.sandbox_ns, [sys.executable, "-c", _ASK, source, tag], timeout=scaled(120))
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def _log(run: GatewayRun) -> str:
    return (run.lab.state_dir / "logs" / "gateway.log").read_text(errors="replace")


def _decisions(run: GatewayRun, since: float) -> list[tuple[str, int, dict[str, object]]]:
    """The decision lines of the gateway's log made at or after ``since``: the module's gateway is shared, and the
    other test's kill leaves the lockdown's drops of both sandboxes (the supervisor's drop logger) in the log."""
    found = []
    for line in _log(run).splitlines():
        match = _DECISION.search(line)
        if match:
            decision = json.loads(match.group(3))
            if float(decision.get("ts", 0)) >= since:
                found.append((match.group(1), int(match.group(2)), decision))
    return found


def _resolver_pid(run: GatewayRun) -> int:
    done = subprocess.run(["ip", "netns", "pids", run.lab.gateway_ns], capture_output=True, text=True, check=False)
    for pid in map(int, done.stdout.split()):
        try:
            cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"egress.gateway.dnsworker" in cmdline:
            return pid
    raise AssertionError("no resolver process in the gateway namespace")


def test_each_sandbox_is_answered_and_tracked_by_its_own_process(run: GatewayRun) -> None:
    since = time.time()
    worker = _resolver_pid(run)
    for source in (SANDBOX_V4, SECOND_V4):
        asked = _ask(run, source, "all")
        assert (asked["udp"], asked["tcp"]) == (0, 0), asked  # NOERROR
        tunnel = asked["tunnel"]
        assert isinstance(tunnel, list) and tunnel and all(rcode == 5 for rcode in tunnel), asked  # REFUSED each

    def both_tunnels_found() -> list[tuple[str, int, dict[str, object]]]:
        found = _decisions(run, since)
        for sandbox in ("agent", "second"):
            tunnel = [d for d in found if d[2].get("sandbox") == sandbox and d[2].get("reason") == "dns-tunnel"]
            assert tunnel, f"no dns-tunnel decision for {sandbox}: {_log(run)[-3000:]}"
        return found

    found = eventually(both_tunnels_found, timeout=30)
    writers = {
        sandbox: {(d[0], d[1]) for d in found if d[2].get("sandbox") == sandbox} for sandbox in ("agent", "second")
    }
    assert len(writers["agent"]) == 1 and next(iter(writers["agent"]))[0] == "gateway", writers
    assert writers["second"] == {("dns", worker)}, writers
    hosts = {str(d[2].get("host")) for d in found if d[2].get("sandbox") == "second"}
    assert {"allowed.lab", "t.lab"} <= hosts, hosts  # t.lab: the base domain its tracker found tunnelling


def test_a_killed_resolver_process_is_a_component_death(run: GatewayRun) -> None:
    before = _resolver_pid(run)
    os.kill(before, signal.SIGKILL)
    asked = _ask(run, SECOND_V4, "udp-only")
    assert asked["udp"] != 0, asked  # no answer (no process behind its port, then the lockdown), never an answer

    def locked_down() -> bool:
        log = _log(run)
        assert "LOCKDOWN" in log and "resolver-1" in log, log[-3000:]
        return True

    eventually(locked_down, timeout=60)

    def answered_by_a_new_process() -> int:
        pid = _resolver_pid(run)
        assert pid != before
        assert _ask(run, SECOND_V4, "udp-only")["udp"] == 0
        return pid

    after = eventually(answered_by_a_new_process, timeout=120, interval=1.0)

    def decided_by_the_new_process() -> bool:  # an allowed decision's line is written within a fifth of a second
        seconds = {(d[0], d[1]) for d in _decisions(run, 0.0) if d[2].get("sandbox") == "second"}
        assert ("dns", after) in seconds, seconds
        return True

    eventually(decided_by_the_new_process, timeout=10)
