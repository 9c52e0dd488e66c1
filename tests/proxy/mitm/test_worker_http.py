"""Decrypted and plain HTTP through a real worker to a site the attacker runs: the mining JSON never reaches it
however the request dresses it (content codings, chunks, trailers, forms, parts, pipelining), a body egress cannot
read is not forwarded, and every block is recorded. Ground truth is the site's own log (`Site.received`)."""

from __future__ import annotations

import gzip
import pathlib
import zlib
from collections.abc import Callable

import brotli  # type: ignore[import-untyped]
import pytest
from backports import zstd

from egress.decide import Reason
from tests.proxy.mitm.worker import EXPLODE, Worker, read_all, read_response, read_until
from tests.waiting import eventually

SECRET = b'{"id":2,"method":"mining.submit","params":["worker","job1","00000000","5f5e1000","a1b2c3d4"]}'
MARKER = b"mining.submit"
BENIGN = b'{"query":"weather","city":"Lyon"}'


pytestmark = pytest.mark.usefixtures("fresh_log")


def post(body: bytes, *extra: str, target: str = "/api") -> bytes:
    fields = "".join(f"{line}\r\n" for line in extra)
    if not any(line.lower().startswith("transfer-encoding") for line in extra):
        fields += f"Content-Length: {len(body)}\r\n"
    return f"POST {target} HTTP/1.1\r\nHost: allowed.lab\r\n{fields}\r\n".encode() + body


def chunked(body: bytes, trailer: bytes = b"") -> bytes:
    pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n" + trailer + b"\r\n"


def _multipart(payload: bytes) -> tuple[bytes, str]:
    body = b'--XyZ\r\nContent-Disposition: form-data; name="job"\r\n\r\n' + payload + b"\r\n--XyZ--\r\n"
    return body, "Content-Type: multipart/form-data; boundary=XyZ"


SECOND_POSTS: dict[str, Callable[[], bytes]] = {
    "bogus-content-encoding": lambda: post(SECRET, "Content-Encoding: bogus"),
    "gzip": lambda: post(gzip.compress(SECRET), "Content-Encoding: gzip"),
    "x-gzip": lambda: post(gzip.compress(SECRET), "Content-Encoding: x-gzip"),
    "deflate-zlib": lambda: post(zlib.compress(SECRET), "Content-Encoding: deflate"),
    "deflate-raw": lambda: post(zlib.compress(SECRET, wbits=-15), "Content-Encoding: deflate"),
    "br": lambda: post(brotli.compress(SECRET), "Content-Encoding: br"),
    "zstd": lambda: post(zstd.compress(SECRET), "Content-Encoding: zstd"),
    "gzip-then-br": lambda: post(brotli.compress(gzip.compress(SECRET)), "Content-Encoding: gzip, br"),
    "chunked": lambda: post(chunked(SECRET), "Transfer-Encoding: chunked"),
    "chunked-gzip": lambda: post(
        chunked(gzip.compress(SECRET)), "Transfer-Encoding: chunked", "Content-Encoding: gzip"
    ),
    "header": lambda: post(BENIGN, "X-Job: " + SECRET.decode()),
    "form": lambda: post(b"a=1&job=" + SECRET.replace(b'"', b"%22"), "Content-Type: application/x-www-form-urlencoded"),
    "query": lambda: post(BENIGN, target="/api?job=" + SECRET.decode().replace('"', "%22").replace(" ", "%20")),
    "multipart": lambda: post(_multipart(SECRET)[0], _multipart(SECRET)[1]),
    "multipart-gzip-body": lambda: post(
        gzip.compress(_multipart(SECRET)[0]), _multipart(SECRET)[1], "Content-Encoding: gzip"
    ),
}  # fmt: skip


@pytest.mark.parametrize("tls", [True, False], ids=["decrypted", "plain"])
@pytest.mark.parametrize("name", sorted(SECOND_POSTS))
def test_a_second_post_never_delivers_the_mining_json(worker: Worker, name: str, tls: bool) -> None:
    worker.to("tls" if tls else "plain")
    with worker.connect(tls) as sock:
        sport = sock.getsockname()[1]
        sock.sendall(post(BENIGN))
        assert read_response(sock).startswith(b"HTTP/1.1 200")  # positive control: the site answers
        sock.sendall(SECOND_POSTS[name]())
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert MARKER not in worker.site.received()
    [block] = eventually(lambda: worker.reported.blocks(sport))
    assert block.verdict.reason is Reason.MINING, block.verdict


def test_pipelined_requests_are_each_inspected(worker: Worker) -> None:
    worker.to("plain")
    with worker.connect(False) as sock:
        sock.sendall(post(BENIGN) + post(SECRET) + post(BENIGN))
        answers = read_until(sock, lambda got: got.count(b"HTTP/1.1 ") == 3)
    assert b"HTTP/1.1 403" in answers  # the gate already saw the pipelined second request in the first bytes
    assert MARKER not in worker.site.received()


def test_http1_trailers_are_never_forwarded(worker: Worker) -> None:
    """mitmproxy 12 does not take HTTP/1 request trailers (its HTTP/1 reader raises, and mitmproxy would leave the
    connection open and silent forever): egress closes the connection and records the block
    (`egress.proxy.mitm.crashes`). Trailers of HTTP/2 requests are read like headers
    (`egress.proxy.mitm.inspect.read`)."""
    worker.to("tls")
    with worker.connect(True) as sock:
        sport = sock.getsockname()[1]
        sock.sendall(post(BENIGN))
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(post(chunked(BENIGN, b"X-Job: " + SECRET + b"\r\n"), "Transfer-Encoding: chunked"))
        assert read_all(sock) == b""  # closed, not answered (and not left hanging: read_all ends on the close)
    assert MARKER not in worker.site.received()
    [block] = eventually(lambda: worker.reported.blocks(sport))
    assert "inspection-error" in block.verdict.evidence and "trailers" in block.verdict.evidence, block.verdict


@pytest.mark.parametrize(
    "framing",
    [
        "Transfer-Encoding: chunked\r\nContent-Length: 4",
        "Content-Length: 4\r\nContent-Length: 90",
        "Transfer-Encoding: xchunked",
        "Transfer-Encoding: chunked, identity",
    ],
)  # fmt: skip
def test_ambiguous_framing_is_refused_not_forwarded(worker: Worker, framing: str) -> None:
    worker.to("plain")
    smuggled = chunked(b"ab") + post(SECRET)
    with worker.connect(False) as sock:
        sock.sendall(f"POST /api HTTP/1.1\r\nHost: allowed.lab\r\n{framing}\r\n\r\n".encode() + smuggled)
        read_all(sock)
    assert MARKER not in worker.site.received()


@pytest.mark.parametrize("coding", ["bogus", "compress", "gzip"])
def test_a_body_egress_cannot_read_as_the_server_would_is_blocked_as_unidentified(worker: Worker, coding: str) -> None:
    worker.to("tls")
    body = BENIGN if coding != "gzip" else b"\x1f\x8b\x08\x00corrupt" + BENIGN
    with worker.connect(True) as sock:
        sport = sock.getsockname()[1]
        sock.sendall(post(body, f"Content-Encoding: {coding}"))
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert b"Lyon" not in worker.site.received()
    [block] = eventually(lambda: worker.reported.blocks(sport))
    assert (block.verdict.reason, block.verdict.finding and block.verdict.finding.protocol) == (
        Reason.TUNNEL,
        "unidentified",
    )


def test_a_decompression_bomb_is_cut_off_and_blocked(worker: Worker) -> None:
    worker.to("tls")
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)
    with worker.connect(True) as sock:
        sock.sendall(post(bomb, "Content-Encoding: gzip"))
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert b"egress blocked" in answer and b"unidentified" in answer
    assert worker.site.received("body").count(b"\0" * 1024) == 0


@pytest.mark.parametrize("tls", [True, False], ids=["decrypted", "plain"])
def test_an_error_in_inspection_blocks_the_request_and_is_recorded(worker: Worker, tls: bool) -> None:
    worker.to("tls" if tls else "plain")
    with worker.connect(tls) as sock:
        sport = sock.getsockname()[1]
        sock.sendall(post(BENIGN))
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(post(EXPLODE + b" and the rest"))
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert EXPLODE not in worker.site.received()
    [block] = eventually(lambda: worker.reported.blocks(sport))
    assert block.verdict.rule == "fail-closed"


def test_server_sent_events_carrying_jobs_never_reach_the_client(worker: Worker) -> None:
    worker.to("tls")
    with worker.connect(True) as sock:
        sport = sock.getsockname()[1]
        sock.sendall(b"GET /sse HTTP/1.1\r\nHost: allowed.lab\r\nAccept: text/event-stream\r\n\r\n")
        answer = read_response(sock)
    assert b"mining.notify" not in answer
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    [block] = eventually(lambda: worker.reported.blocks(sport))
    assert block.verdict.reason is Reason.MINING


def test_benign_requests_pass_whatever_their_coding(worker: Worker, tmp_path: pathlib.Path) -> None:
    worker.to("tls")
    with worker.connect(True) as sock:
        for body, coding in ((BENIGN, "identity"), (gzip.compress(BENIGN), "gzip"), (brotli.compress(BENIGN), "br")):
            sock.sendall(post(body, f"Content-Encoding: {coding}"))
            assert read_response(sock).startswith(b"HTTP/1.1 200")
    assert worker.site.received("body").count(b"Lyon") >= 3
