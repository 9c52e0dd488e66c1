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
from tests.gateway import nothing_passes
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
    try:
        sock.sendto(query[:2] + bytes([0x81, 0x83]) + query[4:6] + b"\0\0\0\0\0\0" + query[12:], peer)
    except OSError:
        pass  # a peer with no route back (a sandbox query that crossed): the resolver must keep answering
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


BOOT_TABLE = Path(__file__).resolve().parents[2] / "deploy" / "nftables" / "egress-boot.nft"


def installed(t: Topology) -> str:
    """The gateway namespace as an installed host is before egress runs: the boot table in place (nftables.service
    loads it at boot). First the positive control: without it, the sandbox's attempts of every kind do cross (so
    the capture would see a leak). Returns the table as listed."""
    no_table(t)
    with nothing_passes.capture(t) as seen:
        nothing_passes.attempt(t)
        crossed = nothing_passes.kinds(seen.leaked(t))
    assert crossed == nothing_passes.ALL_KINDS, f"without a table, only {crossed} crossed: this test proves nothing"
    run(t.gateway, "nft", "-f", str(BOOT_TABLE))
    return run(t.gateway, "nft", "-s", "list", "ruleset")


def refused_meanwhile(
    t: Topology, tmp_path: Path, **changes: str
) -> tuple[subprocess.CompletedProcess[str], list[tuple[str, str]]]:
    """Start ``gateway run`` with ``changes`` while the sandbox keeps trying to reach the internet side, and once
    more after it exited; what the gateway said, and what crossed to the internet side meanwhile."""
    args = egress_argv(t, tmp_path, "gateway run", **changes)
    with nothing_passes.capture(t) as seen:
        gateway = subprocess.Popen(
            ["ip", "netns", "exec", t.gateway, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            while gateway.poll() is None:
                nothing_passes.attempt(t)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    gateway.wait(timeout=0.2)
            stdout, stderr = gateway.communicate(timeout=scaled(120))
        finally:
            if gateway.poll() is None:
                gateway.kill()
                gateway.wait(timeout=10)
        nothing_passes.attempt(t)  # after the refusal too
        leaked = seen.leaked(t)
    return subprocess.CompletedProcess(gateway.args, gateway.returncode, stdout, stderr), leaked


REFUSALS = [
    ({"--sandbox-if": "vlan24"}, "--sandbox-if", "no interface 'vlan24'"),
    ({"--upstream-dns": "not-an-ip"}, "--upstream-dns", "is not an IP address"),
    ({"--upstream-dns": "10.78.0.9"}, "--upstream-dns", "does not answer DNS"),
    ({"--state-dir": "{tmp}/state-with-a-spool-file"}, "--redis-url", "spool"),
]


def _materialize(changes: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """``{tmp}`` in a value becomes the test's directory. A state directory named ``...-with-a-spool-file`` is
    writable but holds a file where the spool directory should be: Redis unreachable and no spool is then the only
    problem (root can write anywhere else)."""
    changes = {flag: value.replace("{tmp}", str(tmp_path)) for flag, value in changes.items()}
    state = changes.get("--state-dir", "")
    if state.endswith("-with-a-spool-file"):
        Path(state).mkdir(parents=True, exist_ok=True)
        (Path(state) / "spool").write_text("not a directory\n")
    return changes


REFUSAL_IDS = ["interface-typo", "upstream-not-an-address", "upstream-silent", "no-redis-no-spool"]


@pytest.mark.parametrize(("changes", "where", "says"), REFUSALS, ids=REFUSAL_IDS)
def test_a_wrong_setting_starts_nothing_and_names_the_flag(
    lab: Topology, tmp_path: Path, changes: dict[str, str], where: str, says: str
) -> None:
    changes = _materialize(changes, tmp_path)
    before = no_table(lab)
    doctor = egress(lab, tmp_path, "doctor", **changes)
    assert doctor.returncode == 1 and f"egress: {where}: " in doctor.stdout and says in doctor.stdout, doctor
    started = egress(lab, tmp_path, "gateway run", **changes)
    assert started.returncode == 2, started.stderr
    assert f"egress: {where}: " in started.stderr and "nothing was applied" in started.stderr, started.stderr
    assert tables(lab) == before  # nothing applied: no table, no lockdown swapped in half-way


def _one_line_naming(stderr: str, where: str, says: str) -> None:
    problems = [
        line for line in stderr.splitlines() if line.startswith("egress: ") and "nothing was applied" not in line
    ]
    assert len(problems) == 1, stderr
    assert problems[0].startswith(f"egress: {where}: ") and says in problems[0], stderr


@pytest.mark.parametrize(("changes", "where", "says"), REFUSALS, ids=REFUSAL_IDS)
def test_nothing_passes_while_and_after_a_gateway_refuses(
    lab: Topology, tmp_path: Path, changes: dict[str, str], where: str, says: str
) -> None:
    """On a host as installed (boot table in place), a refused start: exit 2, one line naming the flag, the boot
    table left as it was, and no TCP, UDP, DNS or ICMP from the sandbox on the internet side meanwhile."""
    ruleset = installed(lab)
    done, leaked = refused_meanwhile(lab, tmp_path, **_materialize(changes, tmp_path))
    assert done.returncode == 2, done.stderr
    _one_line_naming(done.stderr, where, says)
    assert run(lab.gateway, "nft", "-s", "list", "ruleset") == ruleset  # nothing applied: the boot table as it was
    assert leaked == [], f"crossed while the gateway refused: {leaked[:10]}"


def test_forwarding_off_is_refused(lab: Topology, tmp_path: Path) -> None:
    before = no_table(lab)
    run(lab.gateway, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0")
    try:
        done = egress(lab, tmp_path, "gateway run")
    finally:
        run(lab.gateway, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    assert done.returncode == 2 and "egress: net.ipv4.ip_forward: is 0, must be 1" in done.stderr, done.stderr
    assert tables(lab) == before


def test_nothing_passes_while_and_after_a_gateway_refuses_for_forwarding_off(lab: Topology, tmp_path: Path) -> None:
    """IPv4 forwarding off (IPv6 on: its attempts would still be forwarded without the boot table)."""
    ruleset = installed(lab)
    run(lab.gateway, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0")
    try:
        done, leaked = refused_meanwhile(lab, tmp_path)
    finally:
        run(lab.gateway, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    assert done.returncode == 2, done.stderr
    _one_line_naming(done.stderr, "net.ipv4.ip_forward", "is 0, must be 1")
    assert run(lab.gateway, "nft", "-s", "list", "ruleset") == ruleset
    assert leaked == [], f"crossed while the gateway refused: {leaked[:10]}"


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
    forwarded traffic by default, whatever the interface. Judged by a capture on the internet side, read once the
    gateway host's own marker has come through after the attempts (not by waiting a while)."""
    installed(lab)  # also the positive control: without a table, every kind of attempt crosses
    run(lab.gateway, "ip", "link", "add", "egtwrong0", "type", "veth", "peer", "name", "egtwrong1")
    run(lab.gateway, "ip", "link", "set", "egtwrong0", "up")
    args = egress_argv(lab, tmp_path, "gateway run", **{"--sandbox-if": "egtwrong0"})
    log_path = tmp_path / "gateway.log"
    try:
        with nothing_passes.capture(lab) as seen:
            with log_path.open("w") as log_file:
                gateway = subprocess.Popen(["ip", "netns", "exec", lab.gateway, *args], stderr=log_file)
            try:
                eventually(lambda: "gateway running: policy" in log_path.read_text(), timeout=scaled(120))
                for _ in range(3):
                    nothing_passes.attempt(lab)
                leaked = seen.leaked(lab)
            finally:
                gateway.send_signal(signal.SIGTERM)
                gateway.wait(timeout=60)
    finally:
        subprocess.run(["ip", "netns", "exec", lab.gateway, "ip", "link", "del", "egtwrong0"], check=False)
    assert leaked == [], f"crossed through a gateway on the wrong interface: {leaked[:10]}"
