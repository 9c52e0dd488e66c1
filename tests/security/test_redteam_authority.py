"""Red team 9: the request target and the authority. What host the gateway judges a plain or decrypted HTTP
request by, against what a server or forward proxy on an allowed host reads as its destination.

The attacker runs a forwarder on allowed.lab's own address (tests/security/redteam_authority_kit.py; plain HTTP on
8080, TLS on 8443 with the lab's allowed.lab certificate, both allowed by tests/security/policies/mitm.yaml, where
allowed.lab is on the decrypt list: 8443 is decrypted by mitmproxy). It reads a request's destination as real
servers do: Python's `urlsplit` of the target (a forward proxy on `http.server`), the target resolved against
``http://<Host>`` by a WHATWG URL parser (Node's ``new URL(req.url, base)``), the last of two Host lines, a Host's
port, a CONNECT's authority; a request it reads as another destination (another host, or allowed.lab on a port the
policy does not list) it forwards there. The client in the sandbox sends each row's bytes on one connection.

Ground truth: the forwarder's log (``forward READING HOST PORT``: the gateway let through a request whose
meaning, to this server, is another destination) and the client's answer (blocked.lab's page behind it). Rows
through the gateway's plain-HTTP fast path (an origin-form target with one Host), through mitmproxy (an
absolute-form target, a chunked body, two Host lines, HTTP/1.0 without Host) and inside decrypted TLS. Rows that
got through before the fixes (20 strict xfails when the round was played) are closed; see docs/security.md,
"Ninth round", for what crossed then and what changed.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import pytest

from egress.lab import certs
from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, SecurityLab, report
from tests.security.test_streams_http_smuggling import ALLOWED

pytestmark = pytest.mark.security

PLAIN, TLS = 8080, 8443
_KIT = "from tests.security.redteam_authority_kit import forwarder_main; forwarder_main()"
BLOCKED_PAGE = b"blocked.lab: hello from the egress lab"

CLIENT = r"""
import socket, ssl, sys
from tests.security.mitm_client import resolve
port, tls, cafile = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
parts = [bytes.fromhex(part) for part in sys.argv[4].split(",")]
sock = socket.create_connection((resolve("allowed.lab"), port), timeout=10)
if tls:
    sock = ssl.create_default_context(cafile=cafile).wrap_socket(sock, server_hostname="allowed.lab")
for part in parts:
    sock.sendall(part)
    sock.settimeout(2)  # pacing only: what came back to this part, then the next part
    got = b""
    try:
        while chunk := sock.recv(65536):
            got += chunk
    except OSError:
        pass
    print("answer", got.hex(), flush=True)
"""


def _get(target: str, *fields: str, method: str = "GET", version: str = "HTTP/1.1", body: bytes = b"") -> bytes:
    head = [f"{method} {target} {version}".rstrip(), *fields]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


HOST = "Host: allowed.lab"
CHUNKED = ("Transfer-Encoding: chunked", b"2\r\nok\r\n0\r\n\r\n")
"""A chunked body: the fast path hands the request to mitmproxy, which carries the connection from it on."""


def _chunked(target: str, *fields: str) -> bytes:
    return _get(target, HOST, CHUNKED[0], *fields, method="POST", body=CHUNKED[1])


@dataclass(frozen=True)
class Row:
    parts: list[bytes]
    tls: bool = False
    path: str = "fast path"
    """Which part of the gateway carries it (for the report's note)."""


# 198.18.10.2 (blocked.lab) as a WHATWG parser reads a number: decimal, hex, octal, and IPv4-mapped IPv6.
BLOCKED_DECIMAL, BLOCKED_HEX, BLOCKED_OCTAL = "3323070978", "0xc6120a02", "0306.022.012.02"

PADDING = [f"X-Pad-{n}: {'a' * 6000}" for n in range(3)]
ROWS: dict[str, Row] = {
    # Origin form that a lenient server reads as an authority: `//host/`, `/\host/` (WHATWG: a backslash is a
    # slash), with userinfo, as IP literals: the gateway judges these by Host alone.
    "slash-slash": Row([_get("//blocked.lab/", HOST)]),
    "slash-slash-mitmproxy": Row([_chunked("//blocked.lab/")], path="mitmproxy"),
    "slash-backslash": Row([_get("/\\blocked.lab/", HOST)]),
    "slash-backslash-mitmproxy": Row([_chunked("/\\blocked.lab/")], path="mitmproxy"),
    "triple-slash": Row([_get("///blocked.lab/", HOST)]),
    "slash-slash-userinfo": Row([_get("//allowed.lab@blocked.lab/", HOST)]),
    "slash-slash-decimal-ip": Row([_get(f"//{BLOCKED_DECIMAL}/", HOST)]),
    "slash-slash-hex-ip": Row([_get(f"//{BLOCKED_HEX}/", HOST)]),
    "slash-slash-mapped-ipv6": Row([_get("//[::ffff:198.18.10.2]/", HOST)]),
    "slash-slash-percent": Row([_get("//blocked%2elab/", HOST)]),
    "slash-slash-second": Row([_get("/", HOST), _get("//blocked.lab/", HOST)]),
    "slash-slash-http10-no-host": Row([_get("//blocked.lab/", version="HTTP/1.0")], path="mitmproxy"),
    # Absolute form (mitmproxy's; red team 8 judges its authority): userinfo, fragment and backslash tricks where
    # one parser reads allowed.lab and another blocked.lab, other schemes, encodings, numbers, dots and case.
    "absolute-userinfo": Row([_get("http://allowed.lab@blocked.lab/", HOST)], path="mitmproxy"),
    "absolute-fragment-userinfo": Row([_get("http://blocked.lab#@allowed.lab/", HOST)], path="mitmproxy"),
    "absolute-backslash-userinfo": Row([_get("http://blocked.lab\\@allowed.lab/", HOST)], path="mitmproxy"),
    "absolute-backslash-after": Row([_get("http://allowed.lab\\@blocked.lab/", HOST)], path="mitmproxy"),
    "absolute-https-upper": Row([_get("HTTPS://blocked.lab/", HOST)], path="mitmproxy"),
    "absolute-ws": Row([_get("ws://blocked.lab/", HOST)], path="mitmproxy"),
    "absolute-ftp-port": Row([_get("ftp://blocked.lab:80/", HOST)], path="mitmproxy"),
    "absolute-percent": Row([_get("http://blocked%2elab/", HOST)], path="mitmproxy"),
    "absolute-decimal-ip": Row([_get(f"http://{BLOCKED_DECIMAL}/", HOST)], path="mitmproxy"),
    "absolute-octal-ip": Row([_get(f"http://{BLOCKED_OCTAL}/", HOST)], path="mitmproxy"),
    "absolute-mapped-ipv6": Row([_get("http://[::ffff:198.18.10.2]/", HOST)], path="mitmproxy"),
    "absolute-trailing-dot-case": Row([_get("http://BLOCKED.LAB./", HOST)], path="mitmproxy"),
    "absolute-http10-no-host": Row([_get("http://blocked.lab/", version="HTTP/1.0")], path="mitmproxy"),
    # Host: two lines, a port the rule does not list, an absolute target's port.
    "two-hosts": Row([_get("/", HOST, "Host: blocked.lab")], path="mitmproxy"),
    "two-hosts-blocked-first": Row([_get("/", "Host: blocked.lab", HOST)], path="mitmproxy"),
    "host-unlisted-port": Row([_get("/", "Host: allowed.lab:22")]),
    "absolute-unlisted-port": Row([_get("http://allowed.lab:22/", HOST)], path="mitmproxy"),
    # Request lines the gateway does not read as HTTP/1: HTTP/0.9, another version word.
    "http09-absolute": Row([b"GET http://blocked.lab/\r\n\r\n"], path="raw"),
    "http09-slash-slash": Row([b"GET //blocked.lab/\r\n\r\n"], path="raw"),
    "version-2": Row([_get("http://blocked.lab/", HOST, version="HTTP/2.0")], path="raw"),
    "version-lowercase": Row([_get("http://blocked.lab/", HOST, version="http/1.1")], path="raw"),
    # A head line the gate's HTTP reader refuses (no colon, a name that is not a token, a space before the colon):
    # the gate reads no request and the Host goes unjudged; nginx (`ignore_invalid_headers`, its default) and
    # lenient servers skip such a line and route by the Host.
    "junk-line-host-blocked": Row([_get("/", "Host: blocked.lab", "X@Junk: 1")], path="raw"),
    "no-colon-line-host-blocked": Row([_get("/", "Host: blocked.lab", "Junk")], path="raw"),
    "space-before-colon-host": Row([_get("/", "Host : blocked.lab")], path="raw"),
    # A head past the gate's 16 KiB wait (three fields under nginx's 8 KiB each): judged as raw bytes, Host unread.
    "long-head-host-blocked": Row([_get("/", "Host: blocked.lab", *PADDING)], path="raw"),
    # The fix's variants (the attacker's next tries): case, whitespace, obs-fold, percent-encoded slashes, a
    # second request on a keep-alive connection, pipelined requests, a request line split across segments.
    # A head past the gate's reader (8 KiB) but within its 16 KiB wait: before the fixes relayed raw, Host unread.
    "mid-head-host-blocked": Row([_get("/", "Host: blocked.lab", *PADDING[:1], "X-Pad: " + "b" * 3000)], path="raw"),
    "unknown-method-host-blocked": Row([_get("/", "Host: blocked.lab", method="BREW")], path="raw"),
    "unknown-method-split": Row([b"BREW /", b" HTTP/1.1\r\nHost: blocked.lab\r\n\r\n"], path="raw"),
    "lowercase-method-slash-slash": Row([_get("//blocked.lab/", HOST, method="get")], path="raw"),
    "lowercase-http09": Row([b"get http://blocked.lab/\r\n\r\n"], path="raw"),
    "tab-before-colon-host": Row([_get("/", "Host\t: blocked.lab")], path="raw"),
    "obs-fold-host": Row([_get("/", HOST, "X-Fold: a", "\tHost: blocked.lab")], path="raw"),
    "obs-fold-host-second": Row([_get("/", HOST), _get("/", HOST, "X-Fold: a", " Host: blocked.lab")],
                                path="mitmproxy"),
    "junk-line-second": Row([_get("/", HOST), _get("/", "Host: blocked.lab", "X@Junk: 1")], path="mitmproxy"),
    "space-before-colon-second": Row([_get("/", HOST), _get("/", "Host : blocked.lab")], path="mitmproxy"),
    "junk-line-pipelined": Row([_get("/", HOST) + _get("/", "Host: blocked.lab", "X@Junk: 1")], path="mitmproxy"),
    "http09-second": Row([_get("/", HOST), b"GET http://blocked.lab/\r\n\r\n"], path="mitmproxy"),
    "version-2-second": Row([_get("/", HOST), _get("//blocked.lab/", HOST, version="HTTP/2.0")], path="mitmproxy"),
    "slash-slash-upper": Row([_get("//BLOCKED.LAB/", HOST)]),
    "slash-slash-query": Row([_get("//blocked.lab?x=1", HOST)]),
    "slash-slash-percent-slashes": Row([_get("/%2f%2fblocked.lab/", HOST)]),
    "slash-slash-percent-slashes-upper": Row([_get("/%2F%2Fblocked.lab/", HOST)]),
    "backslash-backslash": Row([_get("\\\\blocked.lab/", HOST)], path="mitmproxy"),
    "slash-slash-pipelined": Row([_get("/", HOST) + _get("//blocked.lab/", HOST)]),
    "slash-slash-allowed-other-port": Row([_get("//allowed.lab:22/", HOST)]),
    "absolute-path-slash-slash": Row([_get("http://allowed.lab//blocked.lab/", HOST)], path="mitmproxy"),
    "host-port-tab": Row([_get("/", "Host:\tallowed.lab:22")]),
    "host-port-upper": Row([_get("/", "Host: ALLOWED.LAB:22")]),
    "host-port-leading-zero": Row([_get("/", "Host: allowed.lab:022")]),
    "host-port-second": Row([_get("/", HOST), _get("/", "Host: allowed.lab:22")]),
    "host-port-pipelined": Row([_get("/", HOST) + _get("/", "Host: allowed.lab:22")]),
    "absolute-port-second": Row([_get("/", HOST), _get("http://allowed.lab:22/", HOST)], path="mitmproxy"),
    "tls-slash-slash-percent": Row([_get("/%2f%2fblocked.lab/", HOST)], tls=True, path="decrypted"),
    "tls-slash-slash-second": Row([_get("/", HOST), _get("//blocked.lab/", HOST)], tls=True, path="decrypted"),
    "tls-host-port-second": Row([_get("/", HOST), _get("/", "Host: allowed.lab:22")], tls=True, path="decrypted"),
    "tls-obs-fold-host": Row([_get("/", HOST, "X-Fold: a", " Host: blocked.lab")], tls=True, path="decrypted"),
    # CONNECT and OPTIONS * inside an allowed plain connection, first or after an allowed request.
    "connect-blocked": Row([_get("blocked.lab:80", "Host: blocked.lab:80", method="CONNECT"), _get("/", HOST)]),
    "connect-allowed-other-port": Row([_get("allowed.lab:22", "Host: allowed.lab:22", method="CONNECT")]),
    "connect-second": Row([_get("/", HOST), _get("blocked.lab:80", "Host: blocked.lab:80", method="CONNECT")]),
    "options-star-blocked-host": Row([_get("*", "Host: blocked.lab", method="OPTIONS")], path="mitmproxy"),
    # Inside decrypted TLS (SNI allowed.lab): mitmproxy's HTTP layer, the Host held to the SNI.
    "tls-slash-slash": Row([_get("//blocked.lab/", HOST)], tls=True, path="decrypted"),
    "tls-slash-backslash": Row([_get("/\\blocked.lab/", HOST)], tls=True, path="decrypted"),
    "tls-absolute": Row([_get("http://blocked.lab/", HOST)], tls=True, path="decrypted"),
    "tls-absolute-backslash-userinfo": Row([_get("http://blocked.lab\\@allowed.lab/", HOST)], tls=True,
                                           path="decrypted"),
    "tls-host-unlisted-port": Row([_get("/", "Host: allowed.lab:22")], tls=True, path="decrypted"),
    "tls-two-hosts": Row([_get("/", HOST, "Host: blocked.lab")], tls=True, path="decrypted"),
    "tls-junk-line-host-blocked": Row([_get("/", "Host: blocked.lab", "X@Junk: 1")], tls=True, path="decrypted"),
    "tls-space-before-colon-host": Row([_get("/", "Host : blocked.lab")], tls=True, path="decrypted"),
    "tls-http09": Row([b"GET http://blocked.lab/\r\n\r\n"], tls=True, path="decrypted"),
}  # fmt: skip


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "mitm.yaml")


def start_forwarder(lab: SecurityLab, kit: str, name: str) -> Attacker:
    """The forwarder `kit` runs (this module's, test_redteam_h2authority's) on allowed.lab's PLAIN and TLS ports, with
    allowed.lab's certificate, once it listens."""
    chain, key = certs.ensure(lab.lab.state_dir).servers["allowed"]
    argv = [sys.executable, "-c", kit, str(chain), str(key), f"plain={ALLOWED}:{PLAIN}", f"tls={ALLOWED}:{TLS}"]
    running = lab.attacker(name, argv)
    running.wait_for("listening")
    return running


@pytest.fixture(scope="module")
def forwarder(lab: SecurityLab) -> Attacker:
    return start_forwarder(lab, _KIT, "authority-forwarder")


@dataclass(frozen=True)
class Played:
    forwarded: list[str]
    """The forwarder's ``forward`` lines for this row: destinations it read and went to."""
    requests: int
    """Bytes of the requests the forwarder received (their heads)."""
    crossed: int
    """Payload bytes to allowed.lab's port in the internet-side capture (TLS records on the decrypted port)."""
    answers: list[bytes]
    reason: str


def _play(lab: SecurityLab, forwarder: Attacker, name: str, row: Row) -> Played:
    skip = len(forwarder.log().splitlines())
    since = time.time()
    port = TLS if row.tls else PLAIN
    args = (str(port), "1" if row.tls else "0", str(lab.run.gateway_ca), ",".join(p.hex() for p in row.parts))
    with lab.capture(f"authority-{name}") as capture:
        done = lab.sandbox_python(CLIENT, *args, timeout=60)
    crossed = capture.result
    assert crossed is not None
    answers = [bytes.fromhex(line[7:].strip()) for line in done.stdout.splitlines() if line.startswith("answer ")]
    assert answers, done.stdout + done.stderr  # the client ran
    lines = forwarder.log().splitlines()[skip:]
    forwarded = [line for line in lines if line.startswith("forward ")]
    requests = sum(len(bytes.fromhex(line.split()[1])) for line in lines if line.startswith("request "))
    reason = lab.reason_of(since, lambda r: r.dport == port and r.action == "block", timeout=5)
    return Played(forwarded, requests, crossed.bytes_to(ALLOWED, port, "tcp"), answers, reason)


def test_control_the_forwarder_serves_allowed_lab_and_forwards_what_it_reads_elsewhere(
    lab: SecurityLab, forwarder: Attacker
) -> None:
    """The harness can fail: an ordinary request is served by the forwarder itself, and the forwarder does go to
    blocked.lab when it reads it (played from the internet side, where nothing judges it)."""
    played = _play(lab, forwarder, "control", Row([_get("/", HOST)]))
    assert played.forwarded == [] and b"own page" in played.answers[0], played
    assert played.reason == ""
    probe = f"import socket; s = socket.create_connection(('{ALLOWED}', {PLAIN})); "
    probe += "s.sendall(b'GET //blocked.lab/ HTTP/1.1\\r\\nHost: allowed.lab\\r\\n\\r\\n'); print(s.recv(4096))"
    skip = len(forwarder.log().splitlines())
    direct = lab.attacker("authority-control", [sys.executable, "-c", probe])
    direct.wait_for("blocked.lab: hello")
    assert any(line.startswith("forward whatwg blocked.lab") for line in forwarder.log().splitlines()[skip:])


BENIGN: dict[str, bytes] = {
    "host-own-port": _get("/", "Host: allowed.lab:8080"),
    "double-slash-inside-path": _get("/a//b?next=//x", HOST),
    "percent-slash-inside-path": _get("/api/group%2Fproject", HOST),
}
"""Requests the fixes must leave alone: the connection's own port in Host, `//` past a path's start."""


@pytest.mark.parametrize("name", list(BENIGN))
def test_ordinary_requests_near_the_refused_ones_are_served(lab: SecurityLab, forwarder: Attacker, name: str) -> None:
    played = _play(lab, forwarder, f"benign-{name}", Row([BENIGN[name]]))
    assert played.forwarded == [] and b"own page" in played.answers[0], played
    assert played.reason == ""


@pytest.mark.parametrize("technique", list(ROWS))
def test_a_request_whose_target_or_host_means_another_destination(
    lab: SecurityLab, forwarder: Attacker, technique: str
) -> None:
    row = ROWS[technique]
    played = _play(lab, forwarder, technique, row)
    reached = any(BLOCKED_PAGE in answer for answer in played.answers)
    goal = bool(played.forwarded)
    sent = played.crossed if not row.tls else played.requests
    note = f"{row.path}; " + ("; ".join(played.forwarded) if goal else "held")
    note += "; blocked.lab's page back" if reached else ""
    report(f"redteam/authority-{technique}", "tunnel", sent if goal else 0, goal, played.reason or None, note)
    assert not goal, (technique, played.forwarded, reached, played.reason, played.answers)
