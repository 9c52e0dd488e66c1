"""Domain fronting through the decrypt path (issue 13): TLS whose SNI names the allowed, decrypted host, and a
request inside that names another. Through a real worker to the attacker's site; ground truth is the site's own
log (`Site.received`): no request naming the other host arrives, and each refusal is recorded as
``domain-fronting``. Also a circumvention tool's request inside allowed, decrypted TLS (meek's ``X-Session-Id``
POST, egress.detect.circumvent): refused and recorded as a tunnel."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import pytest

from egress.decide import Reason
from tests.proxy.mitm.worker import Worker, read_response
from tests.waiting import eventually

pytestmark = pytest.mark.usefixtures("fresh_log")

FRONTED = b"blocked.lab"


def _refused(worker: Worker, sport: int, reason: Reason) -> None:
    [block] = eventually(lambda: worker.reported.blocks(sport))
    assert block.verdict.reason is reason, block


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: blocked.lab\r\n\r\n",
        b"GET https://blocked.lab/ HTTP/1.1\r\nHost: allowed.lab\r\n\r\n",  # RFC 9112 §3.2.2: the target wins
        b"GET https://blocked.lab:443/x HTTP/1.1\r\nHost: allowed.lab:443\r\n\r\n",
    ],
    ids=["host", "absolute-target", "absolute-target-port"],
)
def test_a_request_naming_another_host_inside_decrypted_tls_is_refused(worker: Worker, head: bytes) -> None:
    worker.to("tls")
    with worker.connect(True) as sock:
        sport = sock.getsockname()[1]
        sock.sendall(head)
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert FRONTED not in worker.site.received("request")
    _refused(worker, sport, Reason.DOMAIN_FRONTING)


def test_an_absolute_target_naming_the_allowed_host_passes(worker: Worker) -> None:
    worker.to("tls")
    with worker.connect(True) as sock:
        sock.sendall(b"GET https://allowed.lab/abs HTTP/1.1\r\nHost: allowed.lab\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")
    assert b"/abs" in worker.site.received("request")


def test_the_second_request_of_a_kept_alive_connection_is_judged_too(worker: Worker) -> None:
    worker.to("tls")
    with worker.connect(True) as sock:
        sport = sock.getsockname()[1]
        sock.sendall(b"GET /one HTTP/1.1\r\nHost: allowed.lab\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")  # positive control
        sock.sendall(b"GET /two HTTP/1.1\r\nHost: blocked.lab\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 403")
    assert b"/one" in worker.site.received("request") and FRONTED not in worker.site.received("request")
    _refused(worker, sport, Reason.DOMAIN_FRONTING)


@pytest.mark.parametrize(
    "head",
    [
        b"GET http://blocked.lab/api HTTP/1.1\r\nHost: allowed.lab\r\n\r\n",
        b"GET http://BLOCKED.lab.:8080/api HTTP/1.1\r\nHost: allowed.lab\r\n\r\n",
    ],
    ids=["absolute-target", "absolute-target-case-dot-port"],
)
def test_a_plain_connection_s_first_request_naming_another_host_in_its_target_is_refused(
    worker: Worker, head: bytes
) -> None:
    """Red team 8: plain HTTP's first request is decided by the gate on its Host; an absolute target naming
    another host (which an origin server follows instead of Host, RFC 9112 §3.2.2) is judged too."""
    worker.to("plain")
    with worker.connect(False) as sock:
        sport = sock.getsockname()[1]
        sock.sendall(head)
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert b"/api" not in worker.site.received("request")
    _refused(worker, sport, Reason.NOT_ALLOWLISTED)


def test_a_plain_connection_s_first_request_whose_target_names_its_host_passes(worker: Worker) -> None:
    worker.to("plain")
    with worker.connect(False) as sock:
        sock.sendall(b"GET http://allowed.lab/abs HTTP/1.1\r\nHost: allowed.lab\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")
    assert b"/abs" in worker.site.received("request")


@pytest.mark.parametrize(
    "second",
    [
        b"GET /two HTTP/1.1\r\nHost: blocked.lab\r\n\r\n",
        b"GET http://blocked.lab/two HTTP/1.1\r\nHost: allowed.lab\r\n\r\n",
    ],
    ids=["host", "absolute-target"],
)
def test_the_second_request_of_a_kept_alive_plain_connection_is_judged_too(worker: Worker, second: bytes) -> None:
    """Red team 8: the addon kept "the first request was seen" per request, so every plain request mitmproxy
    carried passed on the connection's first decision. The first is chunked: the front's fast path hands it to
    mitmproxy, which then carries the connection from its start."""
    worker.to("plain")
    with worker.connect(False) as sock:
        sport = sock.getsockname()[1]
        sock.sendall(
            b"POST /one HTTP/1.1\r\nHost: allowed.lab\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        )
        assert read_response(sock).startswith(b"HTTP/1.1 200")  # positive control
        sock.sendall(second)
        assert read_response(sock).startswith(b"HTTP/1.1 403")
    assert b"/one" in worker.site.received("request") and b"/two" not in worker.site.received("request")
    _refused(worker, sport, Reason.NOT_ALLOWLISTED)


def test_an_http2_authority_naming_another_host_is_refused(worker: Worker) -> None:
    worker.to("tls")
    with worker.connect(True, alpn=("h2",)) as sock:
        sport = sock.getsockname()[1]
        connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        connection.initiate_connection()
        headers = [(":method", "GET"), (":scheme", "https"), (":authority", "blocked.lab"), (":path", "/")]
        connection.send_headers(1, headers, end_stream=True)
        sock.sendall(connection.data_to_send())
        status = None
        while status is None:
            data = sock.recv(65536)
            assert data, "closed before an answer"
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[b":status"]
                if isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                    status = b"reset"
            sock.sendall(connection.data_to_send())
    assert status in (b"403", b"reset"), status
    assert FRONTED not in worker.site.received("request")
    _refused(worker, sport, Reason.DOMAIN_FRONTING)


def test_meek_inside_decrypted_tls_is_refused_as_a_tunnel(worker: Worker) -> None:
    worker.to("tls")
    body = b"\x16\x03\x01\x00\x05hello"
    with worker.connect(True) as sock:
        sport = sock.getsockname()[1]
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: allowed.lab\r\nX-Session-Id: 4Zb3qnvNA3LqqWQ1/A3trA\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert b"hello" not in worker.site.received()
    _refused(worker, sport, Reason.TUNNEL)
