"""SSH port forwarding through a network rule that expects ssh: the agent opens ``ssh -N -L`` (and ``-D``) to an
allowed sshd and fetches a page through it six times. The gateway relays SSH (the rule allows it) and watches its
encrypted shape (egress.detect.sshshape): the session is recorded ``tunnel``/``ssh-forwarding``, a suspicion, never
blocked (sftp, rsync and git take the same shape). The control: commands over SSH to the same rule leave no
such record."""

from __future__ import annotations

import time

import pytest

from tests.security.conftest import LabFactory
from tests.security.harness import SecurityLab, report
from tests.security.opaque_kit import POLICY, SSH_OPTIONS, SSHD, Kit, start_servers

pytestmark = pytest.mark.security

PAGE = "page.txt"
FORWARDER = """
import socket, subprocess, sys, time, urllib.request
key, sshd, mode, *options = sys.argv[1:]
spec = ["-L", "9000:127.0.0.1:8081"] if mode == "L" else ["-D", "9000"]
ssh = subprocess.Popen(["ssh", *options, "-i", key, "-p", "2222", "-N", *spec, f"root@{sshd}"])
try:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", 9000), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    got = []
    for _ in range(6):
        if mode == "L":
            got.append(len(urllib.request.urlopen("http://127.0.0.1:9000/%s", timeout=10).read()))
        else:  # curl through the SOCKS proxy that -D opens
            out = subprocess.run(["curl", "-s", "--socks5", "127.0.0.1:9000", "http://127.0.0.1:8081/%s"],
                                 capture_output=True, timeout=20).stdout
            got.append(len(out))
        time.sleep(0.3)
    print("fetched", got)
finally:
    ssh.terminate()
    ssh.wait(10)
""".replace("%s", PAGE)


@pytest.fixture(scope="module")
def forwarding(lab_factory: LabFactory) -> tuple[SecurityLab, Kit]:
    lab = lab_factory(POLICY)
    kit = start_servers(lab)
    (kit.root / PAGE).write_bytes(bytes(range(256)) * 160)  # 40 KB, served by the HTTPS backend on 127.0.0.1:8081
    return lab, kit


def _forwarding_records(lab: SecurityLab, since: float) -> list[str]:
    return [
        f"{r.action}/{r.reason}/{r.protocol}"
        for r in lab.records(since)
        if r.dst == SSHD and r.dport == 2222 and r.protocol == "ssh-forwarding"
    ]


@pytest.mark.parametrize("mode", ["L", "D"])
def test_ssh_port_forwarding_is_recorded(forwarding: tuple[SecurityLab, Kit], mode: str) -> None:
    lab, kit = forwarding
    since = time.time()
    with lab.capture(f"ssh-forwarding-{mode}") as capture:
        done = lab.sandbox_python(FORWARDER, str(kit.user_key), SSHD, mode, *SSH_OPTIONS, timeout=90)
    crossed = capture.result
    assert crossed is not None
    leaked = crossed.bytes_to(SSHD, 2222, "tcp")
    goal = done.stdout.count(str(256 * 160)) == 6
    reason = lab.reason_of(since, lambda r: r.dst == SSHD and r.dport == 2222 and r.protocol == "ssh-forwarding")
    seen = f"{reason}/ssh-forwarding" if reason else None
    report(f"opaque/ssh-forwarding-{mode}", "tunnel", leaked, goal, seen, "recorded, not blocked: a suspicion")
    assert goal, (done.stdout, done.stderr[-800:])
    assert seen == "tunnel/ssh-forwarding", (seen, _forwarding_records(lab, since))
    assert all(item.startswith("record/") for item in _forwarding_records(lab, since))


def test_commands_over_ssh_are_not_taken_for_forwarding(forwarding: tuple[SecurityLab, Kit]) -> None:
    lab, kit = forwarding
    since = time.time()
    ssh = ["ssh", *SSH_OPTIONS, "-i", str(kit.user_key), "-p", "2222", f"root@{SSHD}"]
    runs = [lab.sandbox([*ssh, command]) for command in ("echo ssh-ok", f"cat {kit.root / PAGE} | wc -c", "uname -a")]
    passed = "ssh-ok" in runs[0].stdout and str(256 * 160) in runs[1].stdout
    report("opaque/ssh-forwarding-control-commands", "control", 0, passed, None, "must pass")
    assert passed, [run.stderr[-300:] for run in runs]
    assert _forwarding_records(lab, since) == []
