"""Requests mitmproxy's framing refuses before they are whole are recorded (red team 3's leftovers): through a real
worker to the attacker's site, each refusal is one block, ``tunnel``/``http-protocol-error`` with rule
``http-protocol``, and the site receives nothing of it. Before, mitmproxy answered 400 (HTTP/1) or closed the
connection (HTTP/2) and no hook recorded anything."""

from __future__ import annotations

import h2.config
import h2.connection
import pytest

from egress.decide import Reason
from tests.proxy.mitm.worker import Worker, read_all
from tests.waiting import eventually

pytestmark = pytest.mark.usefixtures("fresh_log")

JOB = b'{"id":1,"method":"mining.subscribe","params":["x"]}'


def _refused(worker: Worker, sport: int) -> str:
    [block] = eventually(lambda: worker.reported.blocks(sport))
    assert (block.verdict.reason, block.verdict.rule) == (Reason.TUNNEL, "http-protocol"), block.verdict
    assert b"mining" not in worker.site.received()
    return block.verdict.evidence


@pytest.mark.parametrize(
    "head",
    [
        b"POST /api HTTP/1.1\r\nHost: allowed.lab\r\nContent-Length: x5\r\n\r\n" + JOB,
        b"POST /api HTTP/1.1\r\nHost: allowed.lab\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n" + JOB + b"\r\n0\r\n\r\n",
        b"POST /api HTTP/1.1\r\nHost: allowed.lab\r\nX-Job " + JOB + b"\r\n\r\n",
        b"POST /api HTTP/1.1 extra\r\nHost: allowed.lab\r\n\r\n" + JOB,
    ],
    ids=["content-length", "chunk-size", "header-line", "request-line"],
)
def test_an_http1_request_mitmproxy_refuses_is_recorded(worker: Worker, head: bytes) -> None:
    worker.to("tls")
    with worker.connect(True) as sock:
        sport = sock.getsockname()[1]
        sock.sendall(head)
        read_all(sock)
    evidence = _refused(worker, sport)
    assert "allowed.lab" in evidence


def test_an_http2_stream_whose_data_breaks_its_content_length_is_recorded(worker: Worker) -> None:
    worker.to("tls")
    with worker.connect(True, alpn=("h2",)) as sock:
        sport = sock.getsockname()[1]
        config = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False)
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        headers = [(":method", "POST"), (":path", "/api"), (":authority", "allowed.lab"), (":scheme", "https")]
        conn.send_headers(1, [*headers, ("content-length", "5")])
        conn.send_data(1, JOB, end_stream=True)
        sock.sendall(conn.data_to_send())
        read_all(sock)
    assert "InvalidBodyLengthError" in _refused(worker, sport)
