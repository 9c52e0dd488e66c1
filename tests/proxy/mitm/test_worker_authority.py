"""Red team 9 through a real worker (the front, mitmproxy and the addon): a request whose target, Host port or head
means another destination to a lenient server. Ground truth is the site's own log (`Site.received`): the request
never arrives; each refusal is recorded with its reason. The same requests in the lab, against a forwarder that
reads them as real servers do: tests/security/test_redteam_authority.py. Red team 10a's HTTP/2 `:path` rows too
(tests/security/test_redteam_h2authority.py)."""

from __future__ import annotations

import socket

import h2.config
import h2.connection
import h2.events
import pytest

from egress.decide import Reason
from tests.proxy.mitm.worker import Worker, read_response
from tests.waiting import eventually

pytestmark = pytest.mark.usefixtures("fresh_log")

CHUNKED = b"POST /one HTTP/1.1\r\nHost: allowed.lab\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
"""A first request the fast path hands to mitmproxy, which then carries the connection."""


def _refused(worker: Worker, sport: int, reason: Reason) -> str:
    [block] = eventually(lambda: worker.reported.blocks(sport))
    assert block.verdict.reason is reason, block
    return block.verdict.evidence


TARGETS = {
    "slash-slash": "//blocked.lab/api",
    "slash-backslash": "/\\blocked.lab/api",
    "triple-slash": "///blocked.lab/api",
    "userinfo": "//allowed.lab@blocked.lab/api",
    "percent-slashes": "/%2F%2fblocked.lab/api",
    "upper": "//BLOCKED.LAB./api",
}


@pytest.mark.parametrize("target", list(TARGETS.values()), ids=list(TARGETS))
@pytest.mark.parametrize("when", ["first", "second"])
def test_an_origin_form_target_naming_another_host_is_refused(worker: Worker, target: str, when: str) -> None:
    worker.to("plain")
    with worker.connect(False) as sock:
        sport = sock.getsockname()[1]
        if when == "second":
            sock.sendall(CHUNKED)
            assert read_response(sock).startswith(b"HTTP/1.1 200")  # positive control
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: allowed.lab\r\n\r\n".encode())
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert b"/api" not in worker.site.received("request")
    assert "blocked.lab" in _refused(worker, sport, Reason.NOT_ALLOWLISTED)


def test_an_origin_form_target_naming_another_host_inside_decrypted_tls_is_refused(worker: Worker) -> None:
    worker.to("tls")
    with worker.connect(True) as sock:
        sport = sock.getsockname()[1]
        sock.sendall(b"GET //blocked.lab/api HTTP/1.1\r\nHost: allowed.lab\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 403")
    assert b"/api" not in worker.site.received("request")
    _refused(worker, sport, Reason.DOMAIN_FRONTING)


@pytest.mark.parametrize("target", ["/a//b", "//allowed.lab/a", "/x?next=//blocked.lab/"])
def test_a_double_slash_that_names_no_other_host_passes(worker: Worker, target: str) -> None:
    worker.to("plain")
    with worker.connect(False) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: allowed.lab\r\n\r\n".encode())
        assert read_response(sock).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("when", ["first", "second"])
def test_a_host_naming_another_port_than_the_connection_s_is_refused(worker: Worker, tls: bool, when: str) -> None:
    worker.to("tls" if tls else "plain")
    other = 1 if worker.target[1] != 1 else 2
    with worker.connect(tls) as sock:
        sport = sock.getsockname()[1]
        if when == "second":
            sock.sendall(f"GET /one HTTP/1.1\r\nHost: allowed.lab:{worker.target[1]}\r\n\r\n".encode())
            assert read_response(sock).startswith(b"HTTP/1.1 200")  # its own port: the positive control
        sock.sendall(f"GET /api HTTP/1.1\r\nHost: allowed.lab:{other}\r\n\r\n".encode())
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert b"/api" not in worker.site.received("request")
    assert f"port '{other}'" in _refused(worker, sport, Reason.NOT_ALLOWLISTED)


def test_an_absolute_target_naming_another_port_is_refused(worker: Worker) -> None:
    worker.to("plain")
    with worker.connect(False) as sock:
        sport = sock.getsockname()[1]
        sock.sendall(b"GET http://allowed.lab:1/api HTTP/1.1\r\nHost: allowed.lab\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 403")
    assert b"/api" not in worker.site.received("request")
    _refused(worker, sport, Reason.NOT_ALLOWLISTED)


def test_a_folded_field_on_a_later_request_is_refused(worker: Worker) -> None:
    """mitmproxy joins an obs-fold line to the field before it and forwards it folded; a server that reads the
    fold as a line of its own reads ``Host: blocked.lab``."""
    worker.to("plain")
    with worker.connect(False) as sock:
        sport = sock.getsockname()[1]
        sock.sendall(CHUNKED)
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /api HTTP/1.1\r\nHost: allowed.lab\r\nX-Fold: a\r\n Host: blocked.lab\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 403")
    assert b"/api" not in worker.site.received("request")
    assert "http-protocol-error" in _refused(worker, sport, Reason.TUNNEL)


@pytest.mark.parametrize(
    "head",
    [
        b"GET /api HTTP/1.1\r\nHost: blocked.lab\r\nX@Junk: 1\r\n\r\n",
        b"GET /api HTTP/1.1\r\nHost: blocked.lab\r\nJunk\r\n\r\n",
        b"GET /api HTTP/1.1\r\nHost : blocked.lab\r\n\r\n",
        b"GET http://blocked.lab/api\r\n\r\n",
        b"GET http://blocked.lab/api HTTP/2.0\r\nHost: allowed.lab\r\n\r\n",
        b"BREW /api HTTP/1.1\r\nHost: blocked.lab\r\n\r\n",
    ],
    ids=["junk-name", "no-colon", "space-before-colon", "http09", "version-2", "unknown-method"],
)
def test_a_first_request_the_gate_cannot_read_is_refused_not_relayed(worker: Worker, head: bytes) -> None:
    worker.to("plain")
    with worker.connect(False) as sock:
        sport = sock.getsockname()[1]
        sock.sendall(head)
        read_response(sock)
    assert b"/api" not in worker.site.received("request")
    assert "http-protocol-error" in _refused(worker, sport, Reason.TUNNEL)


def _h2_statuses(sock: socket.socket, streams: list[list[tuple[str, str]]]) -> list[bytes]:
    """Send each field list as a stream (one after the other, each answered first); the status of each, or
    ``reset``."""
    config = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False)
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    statuses: list[bytes] = []
    for n, fields in enumerate(streams):
        stream = 1 + 2 * n
        conn.send_headers(stream, fields, end_stream=True)
        sock.sendall(conn.data_to_send())
        status = None
        while status is None:
            data = sock.recv(65536)
            assert data, "closed before an answer"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
                    status = dict(event.headers)[b":status"]
                if isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                    status = b"reset"
            sock.sendall(conn.data_to_send())
        statuses.append(status)
    return statuses


H2_PATHS = {
    "absolute": "http://blocked.lab/api",
    "absolute-upper": "HTTPS://BLOCKED.LAB./api",
    "absolute-userinfo": "http://allowed.lab@blocked.lab/api",
    "scheme-no-slashes": "https:blocked.lab/api",
}


@pytest.mark.parametrize("path", list(H2_PATHS.values()), ids=list(H2_PATHS))
def test_an_http2_path_not_in_origin_form_is_refused_on_any_stream(worker: Worker, path: str) -> None:
    """Red team 10a: mitmproxy keeps an HTTP/2 `:path` as it came and re-originates it; an absolute one beside an
    allowed `:authority` reached blocked.lab through a forwarder that resolves it. Refused on a later stream too."""
    worker.to("tls")
    base = [(":method", "GET"), (":scheme", "https"), (":authority", "allowed.lab")]
    with worker.connect(True, alpn=("h2",)) as sock:
        sport = sock.getsockname()[1]
        statuses = _h2_statuses(sock, [[*base, (":path", "/one")], [*base, (":path", path)]])
    assert statuses[0] == b"200" and statuses[1] in (b"403", b"reset"), statuses  # the first: positive control
    assert b"/one" in worker.site.received("request") and b"blocked.lab" not in worker.site.received("request")
    assert "origin form" in _refused(worker, sport, Reason.TUNNEL)
