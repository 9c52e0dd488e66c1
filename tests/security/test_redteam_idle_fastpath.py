"""Red team 7: a keep-alive connection on the front's plain-HTTP fast path outlives the idle timeout.

The gateway's idle timeout (``--idle-timeout``, `egress.proxy.mitm.quiet`) closes a connection that makes no
progress inside mitmproxy, recorded ``idle-timeout``; the front's idle bound (`egress.proxy.idle`) counts only
connections that never sent a byte. A keep-alive HTTP/1.1 connection to an allowed host that the fast path carries
(`egress.proxy.httpfast`: plainly allowed requests are relayed by the front, never handed to mitmproxy) waits for
its next request without a deadline (`PlainHttp._next_request` peeks with none). So an agent's connection that made
one request and then went silent stays open for good: neither bound nor timeout sees it, and one sandbox may hold
as many as the workers' descriptors allow.

Lab: the lab policy, the gateway's idle timeout 3 s. The agent sends a GET to allowed.lab:80, reads the answer,
stays silent for four timeouts, then sends a second GET on the same connection. Control (a passing row): the same
silence after a chunked POST, which the fast path hands to mitmproxy: closed at the timeout, recorded. The fast
path's row was a strict xfail (answered after the silence, no record); closed by `egress.proxy.httpfast`: the next
request is waited for at most the idle timeout (the worker's, passed to the front), then the connection is closed
and recorded ``idle-timeout`` as the addon's `idle_closed` records it.
"""

from __future__ import annotations

import time

import pytest

from egress.lab.topology import GATEWAY_SBX_V4, server
from tests.security.conftest import LabFactory
from tests.security.harness import SecurityLab, report

pytestmark = pytest.mark.security

IDLE_TIMEOUT = 3
SILENCE = 4 * IDLE_TIMEOUT
ALLOWED = server("allowed").v4
CLIENT = """
import socket, sys, time
from egress.lab.sandbox_io import Context, connect, resolve
from tests.sockio import recv_at_least, recv_until
nameserver, how, silence = sys.argv[1], sys.argv[2], float(sys.argv[3])
ctx = Context((nameserver,), False, (), 10.0)
sock = connect(ctx, resolve(ctx, "allowed.lab"), 80)

def exchange(request):
    sock.sendall(request)
    head, _, body = recv_until(sock, b"\\r\\n\\r\\n", closed="closed").partition(b"\\r\\n\\r\\n")
    fields = [line.split(b":", 1) for line in head.split(b"\\r\\n")[1:]]
    length = next((int(value) for name, value in fields if name.strip().lower() == b"content-length"), 0)
    recv_at_least(sock, length, body, closed="closed")
    return head.split(b" ", 2)[1].decode()

if how == "fast":
    first = b"GET /before-silence HTTP/1.1\\r\\nHost: allowed.lab\\r\\n\\r\\n"
else:  # chunked: the fast path hands the connection to mitmproxy
    first = (b"POST /before-silence HTTP/1.1\\r\\nHost: allowed.lab\\r\\nTransfer-Encoding: chunked\\r\\n\\r\\n"
             b"5\\r\\nhello\\r\\n0\\r\\n\\r\\n")
print("first", exchange(first), flush=True)
time.sleep(silence)
try:
    print("second", exchange(b"GET /after-silence HTTP/1.1\\r\\nHost: allowed.lab\\r\\n\\r\\n"), flush=True)
except OSError as error:
    print("closed", type(error).__name__, flush=True)
"""


@pytest.fixture(scope="module")
def lab(lab_factory: LabFactory) -> SecurityLab:
    return lab_factory(extra_args=("--idle-timeout", str(IDLE_TIMEOUT)))


def _silent(lab: SecurityLab, how: str) -> tuple[bool, str, str]:
    """(the request after the silence crossed, the client's output, the reason of an idle record or "")."""
    since = time.time()
    with lab.capture(f"idle-{how}") as capture:
        done = lab.sandbox_python(CLIENT, GATEWAY_SBX_V4, how, str(SILENCE), timeout=SILENCE + 60)
    crossed = capture.result
    assert crossed is not None
    assert done.stdout.startswith("first "), done.stdout + done.stderr  # answered (the lab's site: 404 there)
    after = crossed.contains(b"GET /after-silence", ALLOWED)
    reason = lab.reason_of(since, lambda r: r.reason == "idle-timeout", timeout=10)
    return after, done.stdout.strip().replace("\n", " | "), reason


def test_control_a_connection_mitmproxy_carries_ends_at_the_idle_timeout(lab: SecurityLab) -> None:
    after, output, reason = _silent(lab, "chunked")
    report("idle/mitmproxy-keepalive", "idle", 0, after, reason or None, output)
    assert not after and "closed" in output, output
    assert reason == "idle-timeout", output


def test_a_fast_path_keepalive_connection_ends_at_the_idle_timeout(lab: SecurityLab) -> None:
    after, output, reason = _silent(lab, "fast")
    report("idle/fast-path-keepalive", "idle", 0, after, reason or None, output)
    assert not after and "closed" in output, output
    assert reason == "idle-timeout", output
