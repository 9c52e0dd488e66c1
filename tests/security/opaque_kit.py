"""The attacker's kit for the opaque-tunnel techniques (tests/security/test_opaque_*.py): keys, certificates and
configurations, and the servers it runs in the fake internet behind network-rule addresses of
tests/security/policies/opaque.yaml (sshd, stunnel4, a byte sink that logs what reached it, HTTP, a Stratum pool
behind TLS).

Ports on 198.18.10.7 (all on one network rule, default ``expect`` and ``tls: bound``): 8443 stunnel → sshd,
8444 sink, 8445 stunnel → HTTP (a real HTTPS server), 8447 stunnel → Stratum pool, 8448 sink that speaks first,
8449 OpenVPN, 8080 plain HTTP. On the same address, ports only the host rule of ssh.lab allows: 8452 sink, 8453 a
server that upgrades to TLS after a ``STARTTLS`` line (as SMTP and IMAP do). 198.18.10.4:2222 is sshd itself (a
rule that expects ssh), 198.18.10.3:8446 stunnel → sshd on a rule with ``tls: any``.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass

from egress.lab import certs
from tests.security.harness import POLICIES, Attacker, SecurityLab, report

POLICY = POLICIES / "opaque.yaml"
ATTACK = "198.18.10.7"
SSHD = "198.18.10.4"
ANY_TLS = "198.18.10.3"
SSH_OPTIONS = ("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
               "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=2", "-o", "ServerAliveCountMax=3")  # fmt: skip

SSH_SESSION = r"""
import os, select, subprocess, sys, time
shell = subprocess.Popen(sys.argv[1:], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
seen, deadline = b"", time.monotonic() + 20
while b"#" not in seen and time.monotonic() < deadline and shell.poll() is None:
    if select.select([shell.stdout], [], [], 0.2)[0]:
        seen += os.read(shell.stdout.fileno(), 4096)
if shell.poll() is None:
    shell.stdin.write(b"echo typed-$((6*7))\n"); shell.stdin.flush()
    while b"typed-42" not in seen and time.monotonic() < deadline and shell.poll() is None:
        if select.select([shell.stdout], [], [], 0.2)[0]:
            seen += os.read(shell.stdout.fileno(), 4096)
print("shell", "answered" if b"typed-42" in seen else "silent", flush=True)
print(seen[-400:].decode(errors="replace"), flush=True)
shell.kill()
"""
"""An ssh session with a terminal (argv: the ssh command): waits for the prompt, types a command, prints whether
the shell answered (the goal of the SSH-in-TLS techniques)."""

SINK = """
import socket, sys, threading
host, port, speak = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((host, port)); listener.listen(16)
print("listening", flush=True)
def serve(conn):
    got = 0
    if speak:
        conn.sendall(bytes.fromhex("a3f1c94e7d2b8e10" * 40))
    conn.settimeout(20)
    try:
        while data := conn.recv(65536):
            got += len(data)
    except OSError:
        pass
    print(f"connection got {got} bytes", flush=True)
    conn.close()
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

POOL = """
import json, socket, sys
listener = socket.socket(); listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", int(sys.argv[1]))); listener.listen(8)
print("listening", flush=True)
while True:
    conn, _ = listener.accept()
    for line in conn.makefile("rb"):
        call = json.loads(line)
        print("pool got", call.get("method"), flush=True)
        if call.get("method") == "mining.submit":
            print("share accepted", flush=True)
        conn.sendall(json.dumps({"id": call.get("id"), "result": True, "error": None}).encode() + b"\\n")
    conn.close()
"""


STARTTLS = """
import socket, ssl, sys, threading
host, port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); context.load_cert_chain(cert, key)
listener = socket.create_server((host, port)); print("listening", flush=True)
def serve(conn):
    got = 0
    try:
        conn.settimeout(20)
        line = conn.makefile("rb").readline()
        conn.sendall(b"220 go ahead\\r\\n")
        tls = context.wrap_socket(conn, server_side=True)
        tls.sendall(bytes(range(256)) * 160)  # 40 KiB down, past the inspection cap
        while data := tls.recv(65536):
            got += len(data)
        print(f"upgraded after {line!r} got {got} bytes", flush=True)
    except OSError as error:
        print(f"failed after {got} bytes: {error}", flush=True)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""


@dataclass
class Kit:
    root: pathlib.Path
    user_key: pathlib.Path
    cert: pathlib.Path
    key: pathlib.Path


def kit(lab: SecurityLab) -> Kit:
    """Keys and certificates under the lab's log directory (made once per lab)."""
    root = lab.logs / "opaque"
    root.mkdir(parents=True, exist_ok=True)
    for name in ("host", "user"):
        if not (root / name).exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
    files = certs.ensure(root / "certs")
    cert, key = files.servers["ssh"]  # ssh.lab, the name the policy binds to 198.18.10.7
    return Kit(root, root / "user", cert, key)


def start_servers(lab: SecurityLab) -> Kit:
    """Start every server of the module docstring and wait until each listens."""
    tools = kit(lab)
    sshd_config = tools.root / "sshd_config"
    sshd_config.write_text(
        textwrap.dedent(f"""\
        Port 2222
        ListenAddress 127.0.0.1
        ListenAddress {SSHD}
        HostKey {tools.root / "host"}
        AuthorizedKeysFile {tools.user_key}.pub
        PermitRootLogin prohibit-password
        StrictModes no
        UsePAM no
        AllowTcpForwarding yes
        LogLevel DEBUG1
        PidFile none
        """)
    )
    # sshd refuses to start without its privilege separation directory, which only the package's service unit
    # makes (a host that installed openssh-server without starting it has none)
    pathlib.Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    sshd = lab.attacker("sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", str(sshd_config)])
    sshd.wait_for(f"Server listening on {SSHD} port 2222")
    services = {
        "ssh": (f"{ATTACK}:8443", "127.0.0.1:2222"),
        "https": (f"{ATTACK}:8445", "127.0.0.1:8081"),
        "stratum": (f"{ATTACK}:8447", "127.0.0.1:3390"),
        "ssh-any": (f"{ANY_TLS}:8446", "127.0.0.1:2222"),
    }
    stunnel = tools.root / "stunnel-server.conf"
    stunnel.write_text("foreground = yes\npid =\ndebug = info\n" + "".join(
        f"[{name}]\naccept = {accept}\nconnect = {connect}\ncert = {tools.cert}\nkey = {tools.key}\n"
        for name, (accept, connect) in services.items()))  # fmt: skip
    lab.attacker("stunnel", ["stunnel4", str(stunnel)]).wait_for("Configuration successful")
    lab.attacker("sink", [sys.executable, "-c", SINK, ATTACK, "8444", "0"]).wait_for("listening")
    lab.attacker("sink-first", [sys.executable, "-c", SINK, ATTACK, "8448", "1"]).wait_for("listening")
    lab.attacker("pool", [sys.executable, "-c", POOL, "3390"]).wait_for("listening")
    lab.attacker("host-sink", [sys.executable, "-c", SINK, ATTACK, "8452", "0"]).wait_for("listening")
    starttls = [sys.executable, "-c", STARTTLS, ATTACK, "8453", str(tools.cert), str(tools.key)]
    lab.attacker("starttls", starttls).wait_for("listening")
    web = [sys.executable, "-u", "-m", "http.server", "--directory", str(tools.root)]
    lab.attacker("http", [*web, "--bind", ATTACK, "8080"]).wait_for("Serving HTTP")
    lab.attacker("https-backend", [*web, "--bind", "127.0.0.1", "8081"]).wait_for("Serving HTTP")
    return tools


def stunnel_client(lab: SecurityLab, tools: Kit, name: str, local: int, remote: str, sni: str | None) -> Attacker:
    """A stunnel client in the sandbox: ``127.0.0.1:local`` → TLS to ``remote``; ``sni`` None sends none."""
    conf = tools.root / f"stunnel-{name}.conf"
    conf.write_text(
        f"foreground = yes\npid =\ndebug = info\n[{name}]\nclient = yes\naccept = 127.0.0.1:{local}\n"
        f"connect = {remote}\nsni = {sni or ''}\n"
    )
    client = lab.attacker(f"stunnel-{name}", ["stunnel4", str(conf)], where="sandbox")
    client.wait_for("Configuration successful")
    return client


HTTPS_CLIENT = """
import socket, ssl, sys
context = ssl.create_default_context(); context.check_hostname = False; context.verify_mode = ssl.CERT_NONE
for path in ("/", "/user.pub", "/certs/"):
    raw = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    with context.wrap_socket(raw, server_hostname=sys.argv[3]) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\\r\\nHost: {sys.argv[3]}\\r\\n\\r\\n".encode())
        print(tls.recv(65536).split(b"\\r\\n", 1)[0].decode())
"""
"""Three HTTPS requests with the SNI argv[3] to argv[1]:argv[2]; prints each status line."""


def assert_benign_controls_pass(lab: SecurityLab, tools: Kit, row: str, *, curl: bool = False) -> None:
    """The controls a module's blocks must not touch: TLS with a bound SNI (Python's client, and curl when
    ``curl``), real SSH to the rule that expects ssh, plain HTTP. Each must get through, nothing to the kit's
    addresses may be recorded blocked; one suite row ``{row}-<control>`` each."""
    since = time.time()
    lab.sandbox(["dig", "+short", "@10.203.1.1", "ssh.lab"])  # the fixture's binding may have expired (TTL 60 s)
    https = lab.sandbox_python(HTTPS_CLIENT, ATTACK, "8445", "ssh.lab")
    results = {f"https{'-python' if curl else ''}": https.stdout.count("HTTP/1.0 200") == 3}
    if curl:
        fetched = lab.sandbox(["curl", "-sk", "--resolve", f"ssh.lab:8445:{ATTACK}", "https://ssh.lab:8445/user.pub"])
        results["https-curl"] = fetched.stdout.startswith("ssh-ed25519")
    ssh = lab.sandbox(["ssh", *SSH_OPTIONS, "-i", str(tools.user_key), "-p", "2222", f"root@{SSHD}", "echo ssh-ok"])
    plain = lab.sandbox(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://{ATTACK}:8080/"])
    results["ssh-expected"] = "ssh-ok" in ssh.stdout
    results["plain-http"] = plain.stdout == "200"
    blocked = [r for r in lab.records(since) if r.dst in {ATTACK, SSHD} and str(r.action) == "block"]
    for name, passed in results.items():
        report(f"{row}-{name}", "control", 0, passed, None, "must pass")
    assert all(results.values()), (results, https.stdout, https.stderr, ssh.stderr[-500:])
    assert blocked == [], blocked
