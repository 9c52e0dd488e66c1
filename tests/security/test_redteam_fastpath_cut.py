"""Red team 7, the front's plain-HTTP fast path (`egress.proxy.httpfast`): what crosses after a cut, and a server
that never answers.

The cut. An agent's keep-alive connection to a plain-HTTP site of its own (allowed.lab:8080) is carried by the fast
path: a GET, answered, then a POST with a 64 KiB body (the most the fast path relays itself) the site stops
reading after its head (a small receive buffer: its window closes soon), so the body waits in the gateway's
destination-side send buffer. A policy without 8080 applied with ``on_apply: close_forbidden`` cuts the
connection; the site then reads on, and the capture on the internet side counts what crossed after the cut (the
site's window was closed: nothing crossed between the cut and the snapshot). Was: the fast path's cut was a
shutdown of both sides, then a graceful close: the kernel sent what the send buffer held after the cut, and the
request, which the shutdown failed, was sent again on a new connection (taken for a kept connection the server
had closed). Now a cut aborts both sides (``SO_LINGER`` zero, as `egress.proxy.splice.Relay.close`) and nothing
is dialled or sent after it.

The stall. A site that reads the request and answers nothing holds the fast path's wait for its answer
(`egress.proxy.httpupstream.Upstream.response`) without a deadline: an allowed server the agent runs could hold
connections open so, each carrying nothing after its request. mitmproxy's watch ends such a connection at the
idle timeout; now the fast path's sweep does too (progress: a byte from the server, or one it took), recorded
``idle-timeout``. The lab's idle timeout there is `IDLE_TIMEOUT` (3 s).

Scaffolding (the policy, the gateway's established connections, a policy applied) is
tests/security/test_redteam_splice_close.py's, the attacker's site tests/security/redteam_splice_kit.py's
(`fast_site_main`: a GET answered, a POST held until told to read on; or a request never answered), the idle
timeout test_redteam_idle_fastpath.py's.
"""

from __future__ import annotations

import contextlib
import pathlib
import sys
import time

import pytest

from egress.lab.topology import GATEWAY_SBX_V4
from tests.security.conftest import LabFactory
from tests.security.harness import Attacker, SecurityLab, report
from tests.security.test_redteam_idle_fastpath import IDLE_TIMEOUT
from tests.security.test_redteam_splice_close import (
    _KIT,
    POLICY,
    SITE,
    _apply,
    _crossed_since,
    _forbidding,
    _restore,
    _upstream,
)
from tests.waiting import eventually, scaled

pytestmark = pytest.mark.security

PORT = 8080
BODY = 64 * 1024
"""The upload's body: the most the fast path relays itself (`egress.proxy.httpwire.BODY_MAX`)."""
PILED = 16 * 1024
"""Bytes of the upload that must wait in the gateway's destination-side send buffer before the cut."""
SILENCE = 4 * IDLE_TIMEOUT

CLIENT_PROGRAM = """
import socket, sys
from egress.lab.sandbox_io import Context, connect, resolve
nameserver, port, mode, wait = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
ctx = Context((nameserver,), False, (), 20.0)
sock = connect(ctx, resolve(ctx, "allowed.lab"), port)
sock.settimeout(wait)
try:
    if mode == "hold":
        sock.sendall(b"GET /first HTTP/1.1\\r\\nHost: allowed.lab\\r\\n\\r\\n")
        print("first", sock.recv(4096).split(b" ", 2)[1].decode(), flush=True)
        body = b"u" * int(sys.argv[5])
        sock.sendall(b"POST /upload HTTP/1.1\\r\\nHost: allowed.lab\\r\\nContent-Type: text/plain\\r\\n"
                     b"Content-Length: %d\\r\\n\\r\\n" % len(body) + body)
    else:
        sock.sendall(b"GET /silent HTTP/1.1\\r\\nHost: allowed.lab\\r\\n\\r\\n")
    print("sent", flush=True)
    answer = sock.recv(4096)
    print("answered" if answer else "closed eof", answer[:40], flush=True)
except socket.timeout:
    print("waited", flush=True)
except OSError as error:
    print("closed", type(error).__name__, flush=True)
"""
"""The agent: ``CLIENT_PROGRAM NAMESERVER PORT MODE WAIT [BODY]``: ``hold``, a GET then a POST of BODY bytes on the
same connection; ``silent``, one GET; then the answer, waited for at most WAIT seconds."""


def _site(lab: SecurityLab, name: str, flag: pathlib.Path, mode: str) -> Attacker:
    site = lab.attacker(name, [sys.executable, "-c", _KIT.format("fast_site_main"), SITE, str(PORT), str(flag), mode])
    site.wait_for("listening")
    return site


def _client(lab: SecurityLab, name: str, mode: str, wait: float, *more: str) -> Attacker:
    argv = [sys.executable, "-c", CLIENT_PROGRAM, GATEWAY_SBX_V4, str(PORT), mode, str(wait), *more]
    return lab.attacker(name, argv, where="sandbox")


@pytest.fixture(scope="module")
def cut_lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(policy=POLICY)


@pytest.fixture(scope="module")
def idle_lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(policy=POLICY, extra_args=("--idle-timeout", str(IDLE_TIMEOUT)))


def test_a_fast_path_upload_cut_by_the_policy_sends_nothing_more(cut_lab: SecurityLab, tmp_path: pathlib.Path) -> None:
    lab = cut_lab
    forbidding = _forbidding(tmp_path, PORT)
    flag = tmp_path / "read-on"
    log = lab.logs / "gateway.log"
    with lab.capture("fastpath-cut") as capture:
        site = _site(lab, "fastcut-site", flag, "hold")
        client = _client(lab, "fastcut-upload", "hold", scaled(120), str(BODY))
        try:
            site.wait_for("held 0", timeout=60)
            assert "first 200" in client.log(), client.log()  # the GET went through the fast path, kept alive

            def piled() -> list[tuple[int, int]]:
                found = _upstream(lab, PORT)
                assert len(found) == 1 and found[0][0] >= PILED, (found, client.log()[-300:])
                return found

            eventually(piled, timeout=scaled(60), interval=0.2)
            since = len(log.read_text(errors="replace"))
            _apply(lab, forbidding)
            cut = "on_apply: close_forbidden: 1 open connection(s) closed"
            eventually(lambda: cut in log.read_text(errors="replace")[since:] or None, timeout=scaled(30))
            # the cut is done; what follows is what the gateway sends of its own (a graceful end, a new dial)
            eventually(lambda: "closed" in client.log() or None, timeout=scaled(30))
            before = capture.snapshot().bytes_to(SITE, PORT, "tcp")  # the site's window is closed: none since
            flag.touch()
            site.wait_for(r"done 0 ", timeout=60)
            with contextlib.suppress(AssertionError):  # a connection dialled after the cut: counted below
                eventually(lambda: _upstream(lab, PORT) == [] or None, timeout=scaled(10), interval=0.1)
        finally:
            client.stop()
            site.stop()
    leaked = _crossed_since(capture, before, PORT)
    dialled = site.log().count("accepted ")
    _restore(lab, tmp_path, "the fast path's cut")
    note = f"{leaked} bytes crossed after the cut, {dialled} connection(s) to the site; site: {site.log()[-120:]!r}"
    report("fastpath/cut-by-policy", "after-close", leaked, leaked > 0 or dialled > 1, None, note)
    assert leaked == 0 and dialled == 1, note


def test_a_server_that_never_answers_is_cut_at_the_idle_timeout(idle_lab: SecurityLab, tmp_path: pathlib.Path) -> None:
    lab = idle_lab
    since = time.time()
    with lab.capture("fastpath-silent-server"):
        site = _site(lab, "silent-site", tmp_path / "unused", "silent")
        client = _client(lab, "silent-client", "silent", SILENCE)
        try:
            site.wait_for("held 0", timeout=60)
            client.wait_for("answered|closed|waited", timeout=SILENCE + 60)
            ended = site.wait_for(r"done 0 \d+ \w+", timeout=10).group(0)
        except AssertionError:
            ended = ""
        finally:
            client.stop()
            site.stop()
    output = client.log().strip().replace("\n", " | ")
    reason = lab.reason_of(since, lambda r: r.reason == "idle-timeout", timeout=10)
    note = f"client: {output!r}; site: {ended or 'still open'}"
    report("fastpath/silent-server", "idle", 0, "closed" not in output, reason or None, note)
    assert "closed" in output and ended, note
    assert reason == "idle-timeout", note
