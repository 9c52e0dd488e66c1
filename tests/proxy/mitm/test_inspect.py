"""egress.proxy.mitm.inspect: which streams the detectors get for an HTTP message and for WebSocket messages."""

from __future__ import annotations

import gzip
import os
from urllib.parse import quote

import pytest

from egress.detect.base import Category, Detector, Finding, FlowMeta, FlowView, Result, Transport
from egress.detect.httpread import start_pieces
from egress.proxy.mitm import inspect
from egress.proxy.mitm.inspect import (
    FIELD_STREAMS,
    POOL_DETECTORS,
    BodyStreams,
    Message,
    WebSocketInspection,
    inspect_exchange,
    pool_detectors,
    read,
    websocket_tunnel,
)
from tests.proxy.mitm import make_gate

META = FlowMeta(Transport.TCP, "10.0.0.5", 40000, "198.51.100.7", 443)
SUBSCRIBE = b'{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1"]}\n'
CHAT = b'{"type":"chat","text":"' + b"la " * 330 + b'"}'


def _post(body: bytes, *fields: tuple[str, str], query: bytes = b"") -> Message:
    return Message("POST /api HTTP/1.1", (("Host", "allowed.test"), *fields), body, (), query)


def test_the_canonical_stream_drops_framing_and_coding_and_carries_the_decoded_body() -> None:
    message = _post(
        gzip.compress(SUBSCRIBE),
        ("Content-Encoding", "gzip"),
        ("Transfer-Encoding", "chunked"),
        ("Content-Length", "999"),
    )
    done = read(message)
    assert done.problem is None
    assert done.canonical == (
        b"POST /api HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: %d\r\n\r\n" % len(SUBSCRIBE) + SUBSCRIBE
    )
    assert SUBSCRIBE in done.pieces


def test_mining_json_is_found_wherever_a_server_would_read_it() -> None:
    stream = make_gate().stream
    escaped = SUBSCRIBE.decode().replace('"', "%22").encode()
    for message in (
        _post(gzip.compress(SUBSCRIBE), ("Content-Encoding", "gzip")),
        _post(b"x=" + escaped, ("Content-Type", "application/x-www-form-urlencoded")),
        _post(b"{}", query=b"job=" + escaped),
        _post(b"{}", ("X-Job", SUBSCRIBE.decode().strip())),
    ):
        found = inspect_exchange(META, stream, read(message))
        assert found is not None and found.category is Category.MINING, message


def test_a_response_s_event_stream_is_read_as_the_page_s_script_reads_it() -> None:
    stream = make_gate().stream
    request = read(Message("GET /events HTTP/1.1", (("Host", "allowed.test"),), b""))
    notify = b'data: {"id":null,"method":"mining.notify","params":["j","00",[],"1",true]}\n\n'
    response = read(Message("HTTP/1.1 200 OK", (("Content-Type", "text/plain"),), b": hi\n\n" + notify))
    found = inspect_exchange(META, stream, request, response)
    assert found is not None and found.category is Category.MINING


def test_an_unreadable_body_is_a_problem_but_its_raw_bytes_are_still_inspected() -> None:
    done = read(_post(SUBSCRIBE, ("Content-Encoding", "bogus")))
    assert done.problem is not None
    assert inspect_exchange(META, make_gate().stream, done) is not None


def test_websocket_messages_are_judged_for_the_whole_connection() -> None:
    inspection = WebSocketInspection(META, make_gate().stream)
    for _ in range(40):  # 40 kB of benign chat: nothing found, and the connection is still being looked at
        assert inspection.message(CHAT, True, True) is None
    found = inspection.message(SUBSCRIBE, True, True)
    assert found is not None and found.category is Category.MINING


def test_a_json_message_split_over_websocket_messages_is_seen_whole() -> None:
    inspection = WebSocketInspection(META, make_gate().stream)
    assert inspection.message(CHAT, True, True) is None
    assert inspection.message(SUBSCRIBE[:20], True, True) is None
    found = inspection.message(SUBSCRIBE[20:], True, True)
    assert found is not None and found.category is Category.MINING


def test_every_binary_message_gets_the_raw_frame_tunnel_check() -> None:
    inspection = WebSocketInspection(META, make_gate().stream)
    assert inspection.message(b"\x00\x01" * 600, False, True) is None
    found = inspection.message(os.urandom(2048), False, True)
    assert found is not None and found.protocol == "websocket-tunnel"
    assert websocket_tunnel(META, os.urandom(2048), True, False) is None  # text is never judged random
    server_side = websocket_tunnel(META, b"SSH-2.0-OpenSSH_9.6\r\n" + bytes(300), False, False)
    assert server_side is not None


LINE = SUBSCRIBE.strip().decode()


@pytest.mark.parametrize(
    "start",
    [
        f"GET /{LINE} HTTP/1.1",
        f"GET /x?{LINE} HTTP/1.1",
        "GET /" + quote(LINE, safe="") + " HTTP/1.1",
        "GET /" + quote(quote(LINE, safe=""), safe="") + " HTTP/1.1",
        "GET /api;v=" + quote(LINE, safe="") + " HTTP/1.1",
        f"GET http://allowed.test/{LINE} HTTP/1.1",
        f"HTTP/1.1 200 {LINE}",
        "HTTP/1.1 200 " + quote(LINE),
    ],
    ids=["path", "bare-query", "percent", "double-percent", "path-parameter", "absolute-form", "reason", "reason-pct"],
)
def test_mining_json_in_a_start_line_is_found(start: str) -> None:
    """Red team: Stratum verbatim in a request target, or a job in a reason phrase, was read by no detector."""
    message = Message(start, (("Host", "allowed.test"),), b"")
    done = read(message)
    found = inspect_exchange(META, make_gate().stream, done)
    assert found is not None and found.category is Category.MINING, start


def test_an_ordinary_start_line_gives_no_piece() -> None:
    assert start_pieces("GET /index.html?a=1&b=%20c HTTP/1.1") == []
    assert start_pieces("HTTP/1.1 404 Not Found") == []


XML_SUBMIT = (
    b"<?xml version='1.0'?>\n<methodCall>\n<methodName>mining.submit</methodName>\n<params>\n"
    b"<param><value><string>wallet.rig</string></value></param>\n</params>\n</methodCall>\n"
)
"""An XML-RPC share as Python's ``xmlrpc.client`` writes it (red team 4)."""
SPLIT_META = FlowMeta(Transport.TCP, "10.0.0.5", 40000, "198.51.100.3", 3380)


@pytest.mark.parametrize(
    ("pieces", "from_client"),
    [
        ([SUBSCRIBE[i : i + 7] for i in range(0, len(SUBSCRIBE), 7)], True),
        ([SUBSCRIBE[i : i + 1] for i in range(len(SUBSCRIBE))], True),
        ([SUBSCRIBE[:8], b" " * 20_000, SUBSCRIBE[8:]], True),  # whitespace padding past the window
        ([b'{"id":1,"pad":"' + b"A" * 20_000, b'","method":"mining.subscribe","params":[]}\n'], True),
        ([b'{"id":1,"\\u006dethod":"mining.sub', b'scribe","params":[]}\n'], True),  # an escaped key
        ([b'{"id":null,"method":"mining.noti', b'fy","params":[]}\n'], False),  # the pool's side
        ([XML_SUBMIT[:60], XML_SUBMIT[60:]], True),  # red team 4's cut: inside the method's name
        ([XML_SUBMIT[i : i + 9] for i in range(0, len(XML_SUBMIT), 9)], True),  # its markup cut too
        ([b"  " + XML_SUBMIT[:30], XML_SUBMIT[30:]], True),  # blanks before the document
        ([XML_SUBMIT.decode().encode("utf-16-le")[:71], XML_SUBMIT.decode().encode("utf-16-le")[71:]], True),
    ],
    ids=[
        "7-bytes",
        "1-byte",
        "whitespace-padding",
        "string-padding",
        "escaped-key",
        "response",
        "xml-rpc-name",
        "xml-rpc-9-bytes",
        "xml-rpc-blanks",
        "xml-rpc-utf16",
    ],
)
def test_a_message_cut_across_bodies_is_seen_joined(pieces: list[bytes], from_client: bool) -> None:
    """Red team (http split): each body alone holds no whole message (`inspect_exchange`), joined they do."""
    streams, found = BodyStreams(SPLIT_META, make_gate().stream), None
    for piece in pieces:
        found = found or streams.body(piece, from_client)
    assert found is not None and found.category is Category.MINING


def test_bodies_without_a_bracket_or_seen_before_cost_no_run() -> None:
    counted: list[int] = []

    def counting(view: FlowView) -> Result:
        counted.append(1)
        return None

    streams = BodyStreams(SPLIT_META, (counting,))
    for _ in range(50):
        assert streams.body(b"hello", True) is None  # plain text: each body alone is all there is to read
        assert streams.body(b"<html><body>a page</body></html>", False) is None  # markup starts requests' only
    assert counted == []
    for _ in range(3000):
        streams.body(b'{"status":"ok"}', False)
    runs = len(counted)
    for _ in range(100):
        streams.body(b'{"status":"ok"}', False)  # the joined window now repeats: the memo answers
    assert len(counted) == runs


CALL = SUBSCRIBE.strip().decode()
LONG_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"


def _cut(text: str, size: int) -> list[str]:
    return [text[at : at + size] for at in range(0, len(text), size)]


FIELD_CUTS = {
    "repeated-name": [("X-A", piece) for piece in _cut(CALL, 10)],
    "repeated-name-at-commas": [("X-A", '{"id":1'), ("X-A", '"method":"mining.subscribe"'), ("X-A", '"params":[]}')],
    "distinct-short-fields": [(f"X-{n}", piece) for n, piece in enumerate(_cut(CALL, 3))],
    "innocent-between": [
        *[(f"X-{n}", piece) for n, piece in enumerate(_cut(CALL[:24], 4))],
        ("User-Agent", LONG_AGENT),
        *[(f"X-{n}", piece) for n, piece in enumerate(_cut(CALL[24:], 4), 6)],
    ],
    "cut-in-escape": [("X-A", '{"id":1,"method":"\\u00'), ("X-A", '6dining.subscribe","params":[]}')],
    "xml-rpc": [("X-A", piece) for piece in _cut(XML_SUBMIT.decode().replace("\n", ""), 8)],
}


@pytest.mark.parametrize("fields", FIELD_CUTS.values(), ids=FIELD_CUTS.keys())
def test_a_call_cut_across_header_fields_is_read_joined(fields: list[tuple[str, str]]) -> None:
    """Red team 13: no field alone holds the call (each too short, or not a whole call), the fields joined do."""
    message = Message("GET /api HTTP/1.1", (("Host", "allowed.test"), *fields), b"")
    found = inspect_exchange(META, make_gate().stream, read(message))
    assert found is not None and found.category is Category.MINING


def test_a_call_cut_across_trailers_and_a_pool_answer_across_response_fields_are_read_joined() -> None:
    stream = make_gate().stream
    trailers = tuple(("X-A", piece) for piece in _cut(CALL, 10))
    request = read(Message("POST /api HTTP/1.1", (("Host", "allowed.test"),), b"ping", trailers))
    found = inspect_exchange(META, stream, request)
    assert found is not None and found.category is Category.MINING
    notify = '{"id":null,"method":"mining.notify","params":["j","00",[],"1",true]}'
    plain = read(Message("GET / HTTP/1.1", (("Host", "allowed.test"),), b""))
    answer = read(Message("HTTP/1.1 200 OK", tuple(("X-Job", piece) for piece in _cut(notify, 8)), b"ok"))
    found = inspect_exchange(META, stream, plain, answer)
    assert found is not None and found.category is Category.MINING


def test_ordinary_repeated_fields_are_clean() -> None:
    fields = (
        ("Host", "allowed.test"),
        *[("Cookie", f"session{n}=abcdef{n}") for n in range(12)],
        *[("Accept", kind) for kind in ("text/html", "application/json;q=0.9", "*/*;q=0.8")],
        *[("Via", f"1.1 proxy{n}.example") for n in range(6)],
        *[("X-Forwarded-For", hop) for hop in ("203.0.113.7", "198.51.100.2, 192.0.2.44", "10.0.0.9")],
        *[("X-Trace", trace) for trace in ('{"span":1}', '{"span":2}', '["a","b"]')],
        ("User-Agent", LONG_AGENT),
    )
    request = read(Message("GET / HTTP/1.1", fields, b""))
    cookies = tuple(("Set-Cookie", f"c{n}=v{n}; Path=/; HttpOnly") for n in range(40))
    answer = read(Message("HTTP/1.1 200 OK", (("Content-Type", "text/html"), *cookies), b"<html></html>"))
    assert inspect_exchange(META, make_gate().stream, request, answer) is None


def test_joined_fields_are_read_by_the_pool_detectors_only() -> None:
    stream = make_gate().stream
    pools = pool_detectors(stream)
    assert pools and set(pools) <= POOL_DETECTORS and len(pools) < len(stream)
    assert pool_detectors(stream) is pools


@pytest.mark.parametrize("one_name", [True, False], ids=["one-name", "a-name-each"])
def test_a_call_cut_one_field_piece_per_request_is_read_joined_on_the_connection(one_name: bool) -> None:
    """Red team 13's per-request rows: one 4-byte piece per keep-alive request, in one field name or in a new
    name each time."""
    streams, found = BodyStreams(SPLIT_META, make_gate().stream), None
    for n, piece in enumerate(_cut(CALL, 4)):
        name = "X-A" if one_name else f"X-{n}"
        message = read(Message("GET / HTTP/1.1", (("Host", "allowed.test"), (name, piece), ("Accept", "*/*")), b""))
        found = found or streams.message(message, True)
    assert found is not None and found.category is Category.MINING


@pytest.mark.parametrize("encode", [False, True], ids=["as-sent", "percent-encoded"])
def test_a_call_cut_one_cookie_value_per_request_is_read_joined_on_the_connection(encode: bool) -> None:
    """Round 13b: a site that keeps its cookies' values (decoded, as PHP's ``$_COOKIE``) across requests."""
    streams, found = BodyStreams(SPLIT_META, make_gate().stream), None
    for n, piece in enumerate(_cut(CALL, 4)):
        value = quote(piece, safe="") if encode else piece
        message = read(Message("GET / HTTP/1.1", (("Host", "allowed.test"), ("Cookie", f"c{n}={value}")), b""))
        found = found or streams.message(message, True)
    assert found is not None and found.category is Category.MINING


def test_response_fields_are_not_joined_across_responses() -> None:
    """What the join leaves (a cost choice, docs/security.md "Thirteenth round"): a pool's answer cut one piece per
    response field."""
    streams = BodyStreams(SPLIT_META, make_gate().stream)
    notify = '{"id":null,"method":"mining.notify","params":["j","00",[],"1",true]}'
    for piece in _cut(notify, 4):
        assert streams.message(read(Message("HTTP/1.1 200 OK", (("X-Job", piece),), b"")), False) is None


def test_ordinary_fields_on_a_long_connection_run_nothing_and_too_many_opened_fields_fail_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runs: list[bytes] = []
    run = inspect._run

    def counting(
        meta: FlowMeta, detectors: tuple[Detector, ...], client: bytes, server: bytes, cap: int
    ) -> Finding | None:
        runs.append(client)
        return run(meta, detectors, client, server, cap)

    monkeypatch.setattr(inspect, "_run", counting)
    streams = BodyStreams(SPLIT_META, make_gate().stream)
    ordinary = (("Host", "allowed.test"), ("User-Agent", LONG_AGENT), ("Cookie", "a=1; b=2"), ("Accept", "*/*"))
    for _ in range(200):
        assert streams.message(read(Message("GET / HTTP/1.1", ordinary, b"")), True) is None
    assert runs == []
    opened = tuple((f"X-{n}", f'{{"n":{n}}}') for n in range(FIELD_STREAMS + 1))
    found = streams.message(read(Message("GET / HTTP/1.1", opened, b"")), True)
    assert found is not None and found.category is Category.TUNNEL
