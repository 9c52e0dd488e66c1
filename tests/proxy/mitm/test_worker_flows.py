"""A real worker (mitmproxy behind the front) as a source of the flow log: a plain HTTP connection let through is
one ended flow with exactly the bytes the client sent and received; intercepted TLS is one with the name and the
client side's TLS bytes; a connection whose only request was refused (403) is none."""

from __future__ import annotations

import pytest

from egress.flowlog import EndedFlow
from tests.proxy.mitm.worker import Worker, read_all
from tests.waiting import eventually

pytestmark = pytest.mark.usefixtures("fresh_log")


def _ended(worker: Worker, sport: int) -> EndedFlow:
    def found() -> EndedFlow:
        with worker.reported.lock:
            mine = [flow for flow in worker.reported.ended if flow.sport == sport]
        assert len(mine) == 1, mine
        return mine[0]

    return eventually(found, timeout=20)


def test_plain_http_is_one_flow_with_the_bytes_each_way(worker: Worker) -> None:
    worker.to("plain")
    request = b"GET /x HTTP/1.1\r\nHost: allowed.lab\r\nX-Pad: " + b"p" * 700 + b"\r\nConnection: close\r\n\r\n"
    with worker.connect(False) as sock:
        sport = sock.getsockname()[1]
        sock.sendall(request)
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    flow = _ended(worker, sport)
    assert (flow.sandbox, flow.host, flow.action, flow.transport) == ("box", "allowed.lab", "allow", "tcp")
    assert (flow.up, flow.down) == (len(request), len(answer))
    assert flow.rule.startswith("sandboxes.box.allow.hosts") and flow.ended >= flow.started


def test_intercepted_tls_is_one_flow_with_the_client_sides_bytes(worker: Worker) -> None:
    worker.to("tls")
    with worker.connect(True) as tls:
        sport = tls.getsockname()[1]
        tls.sendall(b"GET / HTTP/1.1\r\nHost: allowed.lab\r\nConnection: close\r\n\r\n")
        answer = read_all(tls)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    flow = _ended(worker, sport)
    assert (flow.host, flow.action) == ("allowed.lab", "allow")
    assert flow.up > 200 and flow.down > len(answer)  # a handshake and records around the HTTP bytes


def test_a_connection_whose_request_was_refused_is_no_flow(worker: Worker) -> None:
    worker.to("plain")
    with worker.connect(False) as sock:
        sport = sock.getsockname()[1]
        sock.sendall(b"GET / HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
        answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    with worker.connect(False) as later:  # a connection let through afterwards: once its flow came, ours would have
        later_port = later.getsockname()[1]
        later.sendall(b"GET / HTTP/1.1\r\nHost: allowed.lab\r\nConnection: close\r\n\r\n")
        read_all(later)
    _ended(worker, later_port)
    with worker.reported.lock:
        assert [flow for flow in worker.reported.ended if flow.sport == sport] == []
