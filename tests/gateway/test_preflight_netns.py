"""Pre-flight on a real host (root): sandbox ── gateway ── internet namespaces, `egress doctor` and
`egress gateway run` run in the gateway namespace as a user would, an upstream resolver answering in the internet
namespace. A gateway started with a wrong setting applies nothing (no table in the namespace) and says which flag
to fix; `doctor` says the same without starting anything."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from egress.detect import dns
from tests.nft.netns import Topology, run, socket_in, topology
from tests.waiting import eventually, scaled

pytestmark = pytest.mark.root

RESOLVER = r"""
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind((sys.argv[1], 53))
print("ready", flush=True)
while True:
    query, peer = sock.recvfrom(4096)
    # NXDOMAIN for anything: the same id and question, QR set, RCODE 3
    sock.sendto(query[:2] + bytes([0x81, 0x83]) + query[4:6] + b"\0\0\0\0\0\0" + query[12:], peer)
"""

POLICY = """\
version: 1
sandboxes:
  agent:
    sources: [10.77.0.0/24, "fd77::/64"]
    allow:
      hosts: [allowed.example]
"""


@contextlib.contextmanager
def upstream(netns: str) -> Iterator[str]:
    process = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", RESOLVER, Topology.INTERNET4],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        yield Topology.INTERNET4
    finally:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def lab() -> Iterator[Topology]:
    with topology() as t, upstream(t.internet):
        yield t


def egress(t: Topology, tmp_path: Path, command: str, **changes: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", t.gateway, *egress_argv(t, tmp_path, command, **changes)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def egress_argv(t: Topology, tmp_path: Path, command: str, **changes: str) -> list[str]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    options = {
        "--policy": str(policy),
        "--sandbox-if": t.sandbox_if,
        "--uplink-if": t.uplink_if,
        "--upstream-dns": Topology.INTERNET4,
        "--state-dir": str(tmp_path / "state"),
        "--workers": "1",
        "--redis-url": "redis://127.0.0.1:1/0",  # nobody: records would be spooled
    } | changes
    return [sys.executable, "-m", "egress", *command.split(), *(x for pair in options.items() for x in pair)]


def tables(t: Topology) -> str:
    return run(t.gateway, "nft", "list", "tables")


def no_table(t: Topology) -> str:
    """The gateway namespace without egress's table (a gateway run by another test leaves its lockdown)."""
    for table in ("egress", "egress_guard"):  # the policy (or lockdown) table, and the guard a stop leaves closed
        delete = ["ip", "netns", "exec", t.gateway, "nft", "delete", "table", "inet", table]
        subprocess.run(delete, capture_output=True, check=False)
    before = tables(t)
    assert "egress" not in before
    return before


def test_doctor_passes_a_healthy_gateway_host(lab: Topology, tmp_path: Path) -> None:
    done = egress(lab, tmp_path, "doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok: the gateway would start" in done.stdout


@pytest.mark.parametrize(
    ("changes", "where", "says"),
    [
        ({"--sandbox-if": "vlan24"}, "--sandbox-if", "no interface 'vlan24'"),
        ({"--upstream-dns": "not-an-ip"}, "--upstream-dns", "is not an IP address"),
        ({"--upstream-dns": "10.78.0.9"}, "--upstream-dns", "does not answer DNS"),
        ({"--state-dir": "/proc/egress-preflight"}, "--redis-url", "spool"),
    ],
    ids=["interface-typo", "upstream-not-an-address", "upstream-silent", "no-redis-no-spool"],
)
def test_a_wrong_setting_starts_nothing_and_names_the_flag(
    lab: Topology, tmp_path: Path, changes: dict[str, str], where: str, says: str
) -> None:
    before = no_table(lab)
    doctor = egress(lab, tmp_path, "doctor", **changes)
    assert doctor.returncode == 1 and f"egress: {where}: " in doctor.stdout and says in doctor.stdout, doctor
    started = egress(lab, tmp_path, "gateway run", **changes)
    assert started.returncode == 2, started.stderr
    assert f"egress: {where}: " in started.stderr and "nothing was applied" in started.stderr, started.stderr
    assert tables(lab) == before  # nothing applied: no table, no lockdown swapped in half-way


def test_forwarding_off_is_refused(lab: Topology, tmp_path: Path) -> None:
    before = no_table(lab)
    run(lab.gateway, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0")
    try:
        done = egress(lab, tmp_path, "gateway run")
    finally:
        run(lab.gateway, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    assert done.returncode == 2 and "egress: net.ipv4.ip_forward: is 0, must be 1" in done.stderr, done.stderr
    assert tables(lab) == before


def test_a_taken_port_is_refused(lab: Topology, tmp_path: Path) -> None:
    hold = "import socket, sys; s = socket.create_server(('0.0.0.0', 8081)); print('ready', flush=1); sys.stdin.read()"
    holder = subprocess.Popen(
        ["ip", "netns", "exec", lab.gateway, sys.executable, "-c", hold],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        done = egress(lab, tmp_path, "doctor", **{"--proxy-port": "8081"})
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert done.returncode == 1 and "egress: --proxy-port: TCP port 8081 is taken" in done.stdout, done.stdout


def test_a_healthy_gateway_starts_and_logs_one_json_object_per_line(lab: Topology, tmp_path: Path) -> None:
    """`--log-format json`: every line on stderr, the supervisor's and the proxy workers', is one JSON object; a
    decision is its own fields."""
    args = egress_argv(lab, tmp_path, "gateway run", **{"--log-format": "json"})
    log_path = tmp_path / "gateway.log"
    with log_path.open("w") as log_file:
        gateway = subprocess.Popen(["ip", "netns", "exec", lab.gateway, *args], stderr=log_file)
    try:
        eventually(lambda: "gateway running: policy" in log_path.read_text(), timeout=scaled(120))
        query = dns.build_query(0x4242, "blocked.example", 1)
        with socket_in(lab.sandbox, socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(query, (Topology.GATEWAY4, 53))

        def decided() -> list[dict[str, object]]:
            lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
            return [line for line in lines if line.get("message") == "decision" and line["host"] == "blocked.example"]

        [decision] = eventually(decided, timeout=scaled(30))
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=60)
    assert (decision["action"], decision["src"], decision["component"]) == ("block", Topology.SANDBOX4, "gateway")
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]  # each one JSON object
    assert {"gateway", "proxy"} <= {str(line["component"]) for line in lines}


def test_a_gateway_on_the_wrong_interface_forwards_nothing(lab: Topology, tmp_path: Path) -> None:
    """An interface that exists and is up, but is not where the sandboxes are: pre-flight cannot know, the gateway
    starts, and the sandbox's traffic (arriving on another interface) must still not be forwarded: the table drops
    forwarded traffic by default, whatever the interface. Judged on the internet side."""
    run(lab.gateway, "ip", "link", "add", "egtwrong0", "type", "veth", "peer", "name", "egtwrong1")
    run(lab.gateway, "ip", "link", "set", "egtwrong0", "up")
    listener = socket_in(lab.internet, socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind((Topology.INTERNET4, 9999))
    listener.settimeout(0.2)
    tcp = socket_in(lab.internet, socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind((Topology.INTERNET4, 9998))
    tcp.listen()
    tcp.settimeout(0.2)
    args = egress_argv(lab, tmp_path, "gateway run", **{"--sandbox-if": "egtwrong0"})
    log_path = tmp_path / "gateway.log"
    with log_path.open("w") as log_file:
        gateway = subprocess.Popen(["ip", "netns", "exec", lab.gateway, *args], stderr=log_file)
    arrived: list[bytes] = []
    try:
        eventually(lambda: "gateway running: policy" in log_path.read_text(), timeout=scaled(120))
        with socket_in(lab.sandbox, socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(20):
                sender.sendto(b"egress-wrong-if-secret", (Topology.INTERNET4, 9999))
        with socket_in(lab.sandbox, socket.AF_INET, socket.SOCK_STREAM) as client:
            client.settimeout(scaled(3))
            with contextlib.suppress(OSError):
                client.connect((Topology.INTERNET4, 9998))
                client.sendall(b"egress-wrong-if-secret")
        # Positive control: the gateway's own uplink reaches the listener, so a silence means a drop.
        with socket_in(lab.gateway, socket.AF_INET, socket.SOCK_DGRAM) as control:
            control.sendto(b"control", (Topology.INTERNET4, 9999))

        def control_arrived() -> bool:
            with contextlib.suppress(TimeoutError):
                arrived.append(listener.recv(2048))
            return b"control" in arrived

        eventually(control_arrived, timeout=scaled(30))
        with contextlib.suppress(TimeoutError):
            conn, _ = tcp.accept()
            arrived.append(b"tcp-accepted:" + conn.recv(2048))
            conn.close()
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=60)
        listener.close()
        tcp.close()
        subprocess.run(["ip", "netns", "exec", lab.gateway, "ip", "link", "del", "egtwrong0"], check=False)
    assert arrived == [b"control"], arrived
