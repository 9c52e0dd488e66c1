"""The fast path's HTTP/1.1 framing (egress.proxy.httpwire): the subset it takes, and everything it leaves to
mitmproxy (a request) or answers with a 502 (a response)."""

from __future__ import annotations

import pytest

from egress.proxy import httpwire
from egress.proxy.httpwire import MORE, UNSURE, Request, Response, parse_request, parse_response, wanted

GET = b"GET /a?b=c HTTP/1.1\r\nHost: Allowed.LAB.:8080\r\nUser-Agent: t\r\n\r\n"
POST = b"POST /api HTTP/1.1\r\nHost: allowed.lab\r\nContent-Length: 5\r\n\r\nhello"


def test_a_plain_get_is_taken_with_its_host_as_the_gate_reads_it() -> None:
    request = parse_request(GET)
    assert isinstance(request, Request)
    assert (request.method, request.target, request.host, request.body, request.size) == (
        "GET",
        "/a?b=c",
        "allowed.lab",
        b"",
        len(GET),
    )
    assert request.fields == (("Host", "Allowed.LAB.:8080"), ("User-Agent", "t"))
    assert not request.close


def test_a_body_is_taken_whole_and_pipelined_bytes_are_left() -> None:
    request = parse_request(POST + GET)
    assert isinstance(request, Request)
    assert (request.body, request.size) == (b"hello", len(POST))


@pytest.mark.parametrize("cut", range(1, len(POST)))
def test_a_request_split_anywhere_needs_more(cut: int) -> None:
    assert parse_request(POST[:cut]) is MORE


def test_connection_close_is_noted() -> None:
    request = parse_request(b"GET / HTTP/1.1\r\nHost: a.lab\r\nConnection: keep-alive, Close\r\n\r\n")
    assert isinstance(request, Request) and request.close


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", id="te"),
        pytest.param(
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", id="cl-te"
        ),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n", id="two-cl"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx", id="signed-cl"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x1\r\n\r\nx", id="hex-cl"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n chunked\r\n\r\n", id="obs-fold"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\tmore\r\n\r\n", id="obs-fold-tab"),
        pytest.param(b"GET / HTTP/1.1\nHost: a\n\n", id="bare-lf"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n", id="bare-lf-inside"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\rX: 1\r\n\r\n", id="bare-cr"),
        pytest.param(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", id="space-before-colon"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="no-host"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", id="two-hosts"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n", id="ipv6-host"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", id="host-with-space"),
        pytest.param(b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", id="absolute-uri"),
        pytest.param(b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", id="connect"),
        pytest.param(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n", id="http-1.0"),
        pytest.param(b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", id="two-spaces"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n", id="upgrade"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n", id="connection-upgrade"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n", id="expect"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Encoding: gzip\r\nContent-Length: 0\r\n\r\n", id="coded"),
        pytest.param(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999\r\n\r\n", id="body-too-big"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\r\n\r\n", id="non-ascii-value"),
        pytest.param(b"GET /\x00 HTTP/1.1\r\nHost: a\r\n\r\n", id="nul-in-target"),
        pytest.param(b"\x16\x03\x01\x00\x05hello", id="tls"),
        pytest.param(b"G" * httpwire.HEAD_MAX, id="head-too-long"),
    ],
)
def test_what_two_parsers_could_frame_differently_is_left_to_mitmproxy(data: bytes) -> None:
    assert parse_request(data) is UNSURE


def test_a_bare_lf_is_unsure_before_the_head_ends() -> None:
    """A client that ends lines with LF alone would wait forever for a CRLF CRLF: decided at once."""
    assert parse_request(b"GET / HTTP/1.1\nHost: a") is UNSURE


RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nabc"
CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n"


@pytest.mark.parametrize(
    ("data", "method", "ended", "body", "close"),
    [
        (RESPONSE, "GET", False, b"abc", False),
        (CHUNKED, "GET", False, b"abcde", False),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "GET", False, b"", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", "HEAD", False, b"", False),
        (b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n", "GET", False, b"", False),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", "GET", True, b"until the end", True),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", "GET", False, b"x", True),
    ],
)
def test_responses_are_framed(data: bytes, method: str, ended: bool, body: bytes, close: bool) -> None:
    response = parse_response(data, method, ended)
    assert isinstance(response, Response)
    assert (response.body, response.size, response.close) == (body, len(data), close)


def test_chunked_trailers_are_kept() -> None:
    response = parse_response(CHUNKED, "GET", False)
    assert isinstance(response, Response) and response.trailers == (("X-T", "1"),)


@pytest.mark.parametrize("data", [RESPONSE, CHUNKED])
def test_a_response_split_anywhere_needs_more(data: bytes) -> None:
    for cut in range(1, len(data)):
        assert parse_response(data[:cut], "GET", False) is MORE, cut


_TE_CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
_JOB = b'{"id":null,"method":"mining.notify","params":["job1"]}'
_EXTENSIONS = {
    "chunk-extension": b"2;x=y\r\nok\r\n0\r\n\r\n",
    "job-in-extension": b"2;" + _JOB + b"\r\nok\r\n0\r\n\r\n",
    "job-in-quoted-extension": b'2;job="' + _JOB.replace(b'"', b'\\"') + b'"\r\nok\r\n0\r\n\r\n',
    "extension-on-last-chunk": b"2\r\nok\r\n0;" + _JOB + b"\r\n\r\n",
    "bare-semicolon": b"2;\r\nok\r\n0\r\n\r\n",
    "space-before-extension": b"2 ;x\r\nok\r\n0\r\n\r\n",
}
"""Chunk extensions (red team 8): the relay forwards a response's bytes as they came, so one it judged without its
extensions would hand the client whatever they hold (a pool's job) unjudged: refused, as any unframed response."""


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", id="unasked-101"),
        pytest.param(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", id="interim"),
        pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", id="other-coding"),
        pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", id="te-and-cl"),
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", id="two-cl"),
        pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", id="bad-chunk"),
        pytest.param(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY", id="chunk-overrun"),
        pytest.param(b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", id="bare-lf"),
        *[pytest.param(_TE_CHUNKED + chunks, id=name) for name, chunks in _EXTENSIONS.items()],
        pytest.param(b"HTTP/2 200\r\n\r\n", id="not-http-1"),
    ],
)
def test_responses_it_cannot_frame_are_unsure(data: bytes) -> None:
    assert parse_response(data, "GET", False) is UNSURE


def test_a_response_cut_by_the_close_is_unsure() -> None:
    assert parse_response(RESPONSE[:-1], "GET", True) is UNSURE
    assert parse_response(CHUNKED[:-4], "GET", True) is UNSURE


def test_wanted_says_how_much_a_length_needs() -> None:
    assert wanted(RESPONSE[:20]) == 0
    assert wanted(bytearray(RESPONSE[:-2])) == len(RESPONSE)
    assert wanted(CHUNKED) == 0


def test_the_403_and_the_502_are_well_framed() -> None:
    answer = httpwire.blocked_answer("egress blocked this request: mining (r)", "01ABC")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"X-Egress-Record: 01ABC" in head and b"Connection: close" in head
    response = parse_response(answer, "GET", False)
    assert isinstance(response, Response) and response.status == 403 and response.body == body
    bad = parse_response(httpwire.BAD_GATEWAY, "GET", False)
    assert isinstance(bad, Response) and bad.status == 502 and bad.size == len(httpwire.BAD_GATEWAY)


@pytest.mark.parametrize(
    "target", [b"//blocked.lab/", b"/\\blocked.lab/", b"///blocked.lab/", b"/%2f%2fblocked.lab/", b"/%2F%5Cb/"]
)
def test_a_target_that_lenient_servers_read_as_an_authority_is_left_to_mitmproxy(target: bytes) -> None:
    """Red team 9: the addon judges the host such a target names (`egress.proxy.authority`)."""
    assert parse_request(b"GET " + target + b" HTTP/1.1\r\nHost: allowed.lab\r\n\r\n") is UNSURE


@pytest.mark.parametrize("target", [b"/a//b", b"/x?next=//blocked.lab/", b"/api/group%2Fproject"])
def test_a_double_slash_past_the_start_is_taken(target: bytes) -> None:
    assert isinstance(parse_request(b"GET " + target + b" HTTP/1.1\r\nHost: allowed.lab\r\n\r\n"), Request)


@pytest.mark.parametrize(("host", "port"), [(b"allowed.lab", ""), (b"allowed.lab:8080", "8080"), (b"a.lab:22", "22")])
def test_the_host_s_port_is_kept_for_the_judge(host: bytes, port: str) -> None:
    parsed = parse_request(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert isinstance(parsed, Request) and parsed.port == port
