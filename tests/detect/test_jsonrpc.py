"""Tests for the shared JSON-RPC helpers; also holds the negative fixtures the pool/node detector tests share."""

from __future__ import annotations

import gzip
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress.detect import jsonrpc, jsonscan
from egress.detect.base import MORE, Category, Finding, FlowView
from tests.budget import examples
from tests.detect.feeding import META
from tests.detect.test_tls import TOR_CLIENT_HELLO, TOR_SERVER_FLIGHT

# ndpi_jsonrpc.pcap (benign): a generic JSON-RPC echo service on raw TCP, and Zabbix JSON-RPC over HTTP.
JSONRPC_ECHO = (
    b'{"jsonrpc": "2.0", "method": "echo", "params": ["Testing!"], "id": "ca08159b-af1a-481f-a9e1-0dafdd22bdec"}'
)
ZABBIX_REQUEST = (
    b"POST /zabbix/jsrpc.php?output=json-rpc HTTP/1.1\r\nHost: mdotti.dyndns.org\r\nConnection: keep-alive\r\n"
    b"Content-Length: 117\r\nContent-type: application/json-rpc\r\n\r\n"
    b'{"jsonrpc": "2.0", "method": "zabbix.status", "params": {}, "auth": "608917ce3dd5c681debca02b7757aba4", '
    b'"id": 103796}'
)
ZABBIX_RESPONSE = (
    b"HTTP/1.0 200 OK\r\nServer: Apache/2.2.16 (Debian)\r\nContent-Length: 67\r\n"
    b"Content-Type: application/json-rpc\r\nConnection: keep-alive\r\n\r\n"
    b'{"jsonrpc":"2.0","result":{"result":true,"message":""},"id":103796}'
)
HTTP_GET = b"GET / HTTP/1.1\r\nHost: google.com\r\nUser-Agent: curl/7.64.1\r\nAccept: */*\r\n\r\n"
HTTP_HTML = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 20\r\n\r\n<html>mining.subscribe"
# ndpi_443-curl.pcap: the first bytes of curl's TLS ClientHello.
TLS_CLIENT_HELLO = bytes.fromhex(
    "160301020001000001fc03033e3841edcc20f6d0e5f7167ab7ee91a800c8ef70c2d624c7c7943a24026d9fbc"
)
SSH_BANNER = b"SSH-2.0-OpenSSH_7.4p1 Debian-10+deb9u7\r\n"
SMTP_BANNER = b"220 pigeon.eyrie.af.mil ESMTP Postfix\r\n"

NEGATIVES: list[tuple[bytes, bytes]] = [
    (JSONRPC_ECHO, b""),
    (ZABBIX_REQUEST, ZABBIX_RESPONSE),
    (HTTP_GET, HTTP_HTML),
    (TLS_CLIENT_HELLO, b""),
    (SSH_BANNER, SSH_BANNER),
    (b"", SMTP_BANNER),
]
NEGATIVE_IDS = ["jsonrpc-echo", "zabbix-http", "http-get", "tls-hello", "ssh", "smtp"]


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", jsonrpc.Kind.EMPTY),
        (b" \r\n", jsonrpc.Kind.EMPTY),
        (JSONRPC_ECHO, jsonrpc.Kind.JSON),
        (b'[{"id":1}]', jsonrpc.Kind.JSON),
        (ZABBIX_REQUEST, jsonrpc.Kind.JSON),
        (ZABBIX_REQUEST[:60], jsonrpc.Kind.EMPTY),
        (b"PO", jsonrpc.Kind.EMPTY),
        # A later request or response on the connection may carry JSON: HTTP is never ruled out.
        (HTTP_GET, jsonrpc.Kind.EMPTY),
        (HTTP_HTML, jsonrpc.Kind.EMPTY),
        # Only a whole hello rules TLS in; the first bytes of one are searched like junk meanwhile.
        (TLS_CLIENT_HELLO, jsonrpc.Kind.EMPTY),
        (TOR_CLIENT_HELLO, jsonrpc.Kind.NOT),
        (TOR_SERVER_FLIGHT, jsonrpc.Kind.NOT),
        (SSH_BANNER, jsonrpc.Kind.NOT),
        (b'ce":"00ff"}\n{"id":4,"method":"x"}\n', jsonrpc.Kind.JSON),
        # What a lenient reader skips before the first brace: BOM, NUL, junk, a fake TLS record header.
        (b"\xef\xbb\xbf{}", jsonrpc.Kind.JSON),
        (b"\x00{}", jsonrpc.Kind.JSON),
        (b"\x16\x03\x01\x00\x05{}", jsonrpc.Kind.JSON),
        (b"\x80\x01junk", jsonrpc.Kind.EMPTY),
    ],
)
def test_payload_kind(data: bytes, kind: jsonrpc.Kind) -> None:
    assert jsonrpc.payload(data).kind is kind


def test_payload_http_chunked_bodies_are_joined() -> None:
    # nesfit_pool.eth.pp.ua.pcapng, server side: chunked JSON bodies in text/html responses.
    data = (
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'27\r\n{"id":73,"jsonrpc":"2.0","result":true}\r\n0\r\n\r\n'
        b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'10\r\n{"id":1,"result"\r\n'
    )
    result = jsonrpc.payload(data)
    assert result.kind is jsonrpc.Kind.JSON
    bodies = b'{"id":73,"jsonrpc":"2.0","result":true}\n{"id":1,"result"'
    joined = b'{"id":73,"jsonrpc":"2.0","result":true}{"id":1,"result"'  # as a peer joining the bodies reads them
    assert result.text == bodies + b"\n" + joined
    assert [start for start, _ in result.body_starts] == [0, 40, len(bodies) + 1]
    assert [owner for _, owner in result.body_starts] == [0, 1, 1]
    assert len(result.heads) == 2


def test_methods_reads_values_and_skips_non_keys() -> None:
    text = b'{"id":1,"method" : "mining.subscribe"}\n{"params":["method"],"method":"x"}{"method":'
    assert [name for name, _ in jsonrpc.methods(text)] == ["mining.subscribe", "x"]


def test_has_key_and_message_at() -> None:
    text = b'{"a":"blob"}\n{"blob":"00","target":"ff"}{"next":1}'
    assert not jsonrpc.has_key(text[:13], b"blob")
    assert jsonrpc.has_key(text, b"blob")
    assert jsonrpc.message_at(text, text.find(b"target")) == b'{"blob":"00","target":"ff"}'


def _finds_mining_method(client: jsonrpc.Payload, server: jsonrpc.Payload) -> Finding | None:
    for side in (client, server):
        if any(name == "hit" for name, _ in jsonrpc.methods(side.text)):
            return Finding(Category.MINING, "test", "test", "hit")
    return None


@pytest.mark.parametrize(
    ("client", "server", "complete", "expected"),
    [
        (TLS_CLIENT_HELLO, b"", False, MORE),
        (TOR_CLIENT_HELLO, TOR_SERVER_FLIGHT, False, None),
        (SSH_BANNER, SSH_BANNER, False, None),
        (b"", b"", False, MORE),
        (b"", b"", True, None),
        (b'{"method":"hit"}', b"", False, "finding"),
        (b'{"method":"other"}', b"", False, MORE),
        (b'{"method":"other"}', b"", True, None),
        # Padding or many benign calls never make the rest clean: the engine's cap judges such a flow.
        (b'{"method":"other"}' + b" " * jsonrpc.SCAN_LIMIT, b"", False, MORE),
        (b'{"method":"other"}\n' * 64 + b'{"method":"hit"}', b"", False, "finding"),
        (HTTP_GET, HTTP_HTML, False, MORE),
        (HTTP_GET, HTTP_HTML, True, None),
    ],
)
def test_drive_decisions(client: bytes, server: bytes, complete: bool, expected: object) -> None:
    view = FlowView(META, client=client, server=server, complete=complete)
    result = jsonrpc.drive(view, _finds_mining_method)
    if expected == "finding":
        assert isinstance(result, Finding)
    else:
        assert result is expected


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        (b'{"\\u006dethod":"mining.\\u0073ubmit"}', b'{"method":"mining.submit"}'),
        (b'{"\\u006Dethod":"a\\/b"}', b'{"method":"a/b"}'),
        (b'{"k":"\\u0022\\u005c\\u00e9"}', b'{"k":"\\u0022\\u005c\\u00e9"}'),  # quote, backslash, non-ASCII kept
        (b"\xef\xbb\xbf{}", b"{}"),
        ("{}".encode("utf-16"), b"{}"),
        ('{"method":1}'.encode("utf-16-be"), b'{"method":1}'),
        ('{"method":1}'.encode("utf-32"), b'{"method":1}'),
    ],
)
def test_decode_reads_what_a_lenient_server_reads(raw: bytes, decoded: bytes) -> None:
    assert jsonrpc.decode(raw) == decoded


def _structure_byte_by_byte(text: bytes) -> list[tuple[int, int]]:
    """`jsonscan._structure` as it was written first: one turn per byte (the reference)."""
    found, inside, escaped = [], False, False
    for index, byte in enumerate(text):
        if inside:
            escaped, inside = (False, True) if escaped else (byte == 0x5C, byte != 0x22)
        elif byte == 0x22:
            inside = True
        elif byte in b"{}[]":
            found.append((index, byte))
    return found


@given(st.lists(st.sampled_from([b'"', b"\\", b"{", b"}", b"[", b"]", b"a", b"\n", b":"]), max_size=60))
@settings(max_examples=examples(2000), deadline=None)
def test_the_structure_scan_agrees_with_the_byte_by_byte_reading(pieces: list[bytes]) -> None:
    text = b"".join(pieces)
    assert list(jsonscan._structure(text)) == _structure_byte_by_byte(text)


def test_message_at_reads_a_message_whole_however_long() -> None:
    text = b'{"a":"' + b"x" * 9000 + b'","method":"login","b":"' + b"y" * 9000 + b'"}\n{"next":1}\n'
    offset = text.find(b"login")
    assert jsonrpc.message_at(text, offset) == text[: text.find(b"\n")]
    assert jsonrpc.message_at(text[: offset + 5000], offset, final=False) is None


def test_message_at_counts_a_batch_and_ignores_braces_in_strings() -> None:
    batch = b'[{"id":1,"method":"a"},{"id":2,"method":"b"}]'
    assert jsonrpc.message_at(batch, batch.find(b'"b"'), final=False) is not None
    assert jsonrpc.message_at(batch[:-1], batch.find(b'"b"'), final=False) is None
    text = b'{"method":"a","x":"}"'
    assert jsonrpc.message_at(text, 1, final=False) is None
    assert jsonrpc.message_at(text + b"}", 1, final=False) == text + b"}"


SUBMIT = b'{"id":2,"method":"mining.submit","params":["worker","job1","00000000","5f5e1000","a1b2c3d4"]}\n'


def _coded(coding: str, body: bytes) -> bytes:
    coded = gzip.compress(body, mtime=0) if coding == "gzip" else zlib.compress(body)
    head = f"POST /api HTTP/1.1\r\nHost: a\r\nContent-Encoding: {coding}\r\nContent-Length: {len(coded)}\r\n\r\n"
    return head.encode() + coded


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_a_coded_http_body_is_read_decoded(coding: str) -> None:
    """The proxy's decoder (egress.detect.codings) undoes the body: the pool reads the JSON, so does egress."""
    found = jsonrpc.payload(HTTP_GET + _coded(coding, SUBMIT))
    assert found.kind is jsonrpc.Kind.JSON and b"mining.submit" in found.text


def test_a_cut_coded_body_is_read_as_far_as_it_goes() -> None:
    stream = _coded("gzip", SUBMIT * 40)
    found = jsonrpc.payload(stream[: len(stream) - 30])
    assert b"mining.submit" in found.text


def test_a_coded_bomb_is_decoded_only_to_the_scan_limit() -> None:
    bomb = gzip.compress(b"[" + b" " * (64 * jsonrpc.SCAN_LIMIT) + b"]", mtime=0)
    head = f"POST / HTTP/1.1\r\nContent-Encoding: gzip\r\nContent-Length: {len(bomb)}\r\n\r\n".encode()
    found = jsonrpc.payload(head + bomb)
    assert len(found.text) <= jsonrpc.SCAN_LIMIT + 1


@pytest.mark.parametrize(
    "head",
    [
        b"GET /switch HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET /up HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
    ],
)
def test_bytes_after_a_message_that_start_no_other_are_a_raw_stream(head: bytes) -> None:
    """What a client sends after an Upgrade (refused or not) or an unprompted 101 is not HTTP: a pool behind the
    connection reads it raw (the suite's mitm/upgrade-* and mitm/unprompted-101 techniques)."""
    found = jsonrpc.payload(head + SUBMIT)
    assert found.kind is jsonrpc.Kind.JSON and SUBMIT.strip() in found.text


def test_a_next_request_still_arriving_is_not_read_raw() -> None:
    found = jsonrpc.payload(HTTP_GET + b'POST / HTTP/1.1\r\nContent-Length: 99\r\n{"method":"mining.submit"')
    assert b"mining" not in found.text
