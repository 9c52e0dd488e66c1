"""A client that leaves an HTTP request head unfinished and goes silent, through a real worker with a short idle
timeout (red team 17): the idle timeout's close judges the head as a client's end does (`Gate.on_unfinished_head`),
so Stratum's lines where the next header lines would be are recorded ``mining``, not ``idle-timeout`` alone."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator

import pytest

from egress.decide import Reason
from tests.proxy.mitm.worker import Worker, read_all, read_response, running_worker
from tests.waiting import eventually

IDLE_TIMEOUT = 1.0
"""The worker's idle timeout (seconds): the front first waits its `REQUEST_WAIT` (5 s) for the rest of a head."""
STRATUM = (
    b'{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1"]}\n'
    b'{"id":2,"method":"mining.authorize","params":["rt17.worker","x"]}\n'
)
BENIGN = b"User-Agent: curl/8.5.0\r\nAcc"


@pytest.fixture(scope="module")
def idle_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    with running_worker(tmp_path_factory.mktemp("idle-worker"), idle_timeout=IDLE_TIMEOUT) as running:
        yield running


@pytest.mark.parametrize(
    ("where", "kept_alive"),
    [("plain", False), ("tls", False), ("tls", True)],
    ids=["plain-first-request", "tls-first-request", "tls-after-a-request"],
)
@pytest.mark.parametrize("lines", [STRATUM, BENIGN], ids=["stratum", "benign"])
def test_a_head_abandoned_unfinished_is_judged_when_the_idle_timeout_closes_it(
    idle_worker: Worker, where: str, kept_alive: bool, lines: bytes
) -> None:
    """The head waits in the gate (the first request: no layer chosen) or in mitmproxy's HTTP/1 reader (after an
    answered request, inside intercepted TLS); the client never ends it. On main the idle timeout recorded
    ``idle-timeout`` only; now ``mining`` where it carries a pool's lines, and an ordinary head cut short still
    ``idle-timeout``. Nothing of it reaches the site."""
    worker = idle_worker
    worker.to(where)
    with worker.connect(where == "tls") as sock:
        sport = sock.getsockname()[1]
        if kept_alive:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: allowed.lab\r\n\r\n")
            assert read_response(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /abandoned HTTP/1.1\r\nHost: allowed.lab\r\n" + lines)
        # silent until the worker closes it (the front's wait, then the idle timeout)
        with contextlib.suppress(ssl.SSLError, OSError):
            read_all(sock)
    blocks = eventually(lambda: worker.reported.blocks(sport), timeout=30)
    reasons = [b.verdict.reason for b in blocks]
    if lines == STRATUM:
        assert reasons == [Reason.MINING], blocks
        assert "HTTP request head never finished (the client went silent" in blocks[0].verdict.evidence
    else:
        assert reasons == [Reason.IDLE_TIMEOUT], blocks
    assert b"/abandoned" not in worker.site.received()
