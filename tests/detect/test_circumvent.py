"""egress.detect.circumvent: circumvention tools and fronting named from the cleartext. Psiphon on the real bytes of
nDPI's capture (tests/detect/circumvent_traces.py), split at every offset; fronting without a tool's name, a
certificate that is no CDN's, ALPN that asks for no HTTP, and an SNI on the same bytes changed where it matters;
meek, VLESS and Trojan as their clients write them (the sources cited in the module)."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from egress.detect import circumvent
from egress.detect.base import MORE, Category, Finding, FlowView, Transport
from egress.detect.registry import stream_detectors
from tests.detect.circumvent_traces import PSIPHON_CLIENT_HELLO, PSIPHON_SERVER_HANDSHAKE
from tests.detect.feeding import feed_every_split, feed_stream, meta
from tests.detect.test_websocket import ACCEPT, HANDSHAKE, frame
from tests.lists import shipped_lists

HTTPS = meta(443)
NO_TOOL = PSIPHON_SERVER_HANDSHAKE.replace(b"psiphon3.net", b"example1.net")
NO_CDN = NO_TOOL.replace(b"Cloudflare", b"Exampleorg").replace(b"cloudflaressl", b"exampleorgssl")
NO_HTTP = PSIPHON_CLIENT_HELLO.replace(b"\x02h2\x08http/1.1", b"\x02x2\x08imap/1.1")
MEEK = (
    b"POST / HTTP/1.1\r\nHost: front-own.example\r\nUser-Agent: Go-http-client/1.1\r\nContent-Length: 5\r\n"
    b"X-Session-Id: 4Zb3qnvNA3LqqWQ1/A3trA\r\nAccept-Encoding: gzip\r\n\r\nhello"
)
MEEK_AZURE = MEEK.replace(b"front-own.example", b"meek.azureedge.net").replace(b"X-Session-Id", b"X-Other")
ID = uuid.UUID("b831381d-6324-4d53-ad4f-8cda48b30811").bytes
VLESS = b"\x00" + ID + b"\x00\x01\x01\xbb\x02\x0bexample.com" + b"\x16\x03\x01\x02\x00\x01"
VLESS_VISION = b"\x00" + ID + b"\x12\x0a\x10xtls-rprx-vision\x01\x00\x50\x01\xc6\x33\x64\x07GET / HTTP/1.1\r\n"
VLESS_MUX = b"\x00" + ID + b"\x00\x03" + b"\x00\x0c\x00\x00\x01\x01"
TROJAN = hashlib.sha224(b"password").hexdigest().encode() + b"\r\n\x01\x03\x0bexample.com\x01\xbb\r\nGET /"
TROJAN_V6 = TROJAN[:58] + b"\x01\x04" + bytes(15) + b"\x01\x00\x50\r\n"


def _named(found: Finding | None, protocol: str) -> None:
    assert found is not None
    assert (found.category, found.protocol, found.detector) == (Category.TUNNEL, protocol, circumvent.NAME), found


def test_psiphon_fronted_by_cloudflare_is_named_by_the_certificate() -> None:
    found = feed_stream(circumvent.detect, PSIPHON_CLIENT_HELLO, PSIPHON_SERVER_HANDSHAKE, HTTPS)
    _named(found, "psiphon")
    assert found is not None
    assert "without SNI" in found.evidence and "h2,http/1.1" in found.evidence and "psiphon3.net" in found.evidence


@pytest.mark.parametrize(("server", "protocol"), [(PSIPHON_SERVER_HANDSHAKE, "psiphon"), (NO_TOOL, "cdn-fronting")])
def test_the_same_at_every_split_of_the_client_and_the_server(server: bytes, protocol: str) -> None:
    for found in feed_every_split(circumvent.detect, PSIPHON_CLIENT_HELLO, server, HTTPS):
        _named(found, protocol)
    answers = [circumvent.detect(FlowView(HTTPS, PSIPHON_CLIENT_HELLO, server[:head])) for head in range(len(server))]
    first = next(head for head, answer in enumerate(answers) if answer is not MORE)
    assert all(answer == answers[first] for answer in answers[first:])  # named once the Certificate is whole
    _named(feed_stream(circumvent.detect, PSIPHON_CLIENT_HELLO, server[:first], HTTPS), protocol)
    assert feed_stream(circumvent.detect, PSIPHON_CLIENT_HELLO, server[:300], HTTPS) is None  # the leaf cut


def test_fronting_without_a_tools_name_is_named_by_technique() -> None:
    found = feed_stream(circumvent.detect, PSIPHON_CLIENT_HELLO, NO_TOOL, HTTPS)
    _named(found, "cdn-fronting")
    assert found is not None and "sni.cloudflaressl.com" in found.evidence


@pytest.mark.parametrize(
    ("client", "server"),
    [
        (PSIPHON_CLIENT_HELLO, NO_CDN),  # no SNI to a server that is no CDN: the oddity alone (tls-no-sni)
        (NO_HTTP, PSIPHON_SERVER_HANDSHAKE),  # asks for no HTTP: not the fronting shape
        (PSIPHON_CLIENT_HELLO, b""),  # the server never answered
        (PSIPHON_CLIENT_HELLO[:100], b""),  # a cut hello
    ],
    ids=["not-a-cdn", "no-http-alpn", "no-answer", "cut-hello"],
)
def test_what_is_not_fronting(client: bytes, server: bytes) -> None:
    assert feed_stream(circumvent.detect, client, server, HTTPS) is None


def test_a_tools_domain_as_sni_names_it() -> None:
    hello = _with_sni(PSIPHON_CLIENT_HELLO, "a.psiphon3.net")
    _named(feed_stream(circumvent.detect, hello, b"", HTTPS), "psiphon")
    assert feed_stream(circumvent.detect, _with_sni(PSIPHON_CLIENT_HELLO, "www.example.com"), NO_TOOL, HTTPS) is None


def _with_sni(hello: bytes, name: str) -> bytes:
    """The hello with a server_name extension added first (RFC 6066 §3), the lengths fixed."""
    host = name.encode()
    entry = b"\x00" + len(host).to_bytes(2) + host
    ext = b"\x00\x00" + (len(entry) + 2).to_bytes(2) + len(entry).to_bytes(2) + entry
    body = hello[9:]
    at = 2 + 32 + 1 + body[34]  # version, random, session id
    at += 2 + int.from_bytes(body[at : at + 2])  # cipher suites
    at += 1 + body[at]  # compression methods
    total = int.from_bytes(body[at : at + 2]) + len(ext)
    body = body[:at] + total.to_bytes(2) + ext + body[at + 2 :]
    message = b"\x01" + len(body).to_bytes(3) + body
    return hello[:3] + len(message).to_bytes(2) + message


@pytest.mark.parametrize(("request_bytes", "protocol"), [(MEEK, "meek"), (MEEK_AZURE, "meek")])
def test_meek_requests(request_bytes: bytes, protocol: str) -> None:
    for found in feed_every_split(circumvent.detect, request_bytes, b"", meta(80)):
        _named(found, protocol)


@pytest.mark.parametrize(
    "request_bytes",
    [
        MEEK.replace(b"POST", b"GET "),  # not meek's POST
        MEEK.replace(b"X-Session-Id", b"X-Request-Id"),
        b"GET / HTTP/1.1\r\nHost: www.example.com\r\n\r\n",
    ],
)
def test_ordinary_requests_are_not_meek(request_bytes: bytes) -> None:
    assert feed_stream(circumvent.detect, request_bytes, b"", meta(80)) is None


@pytest.mark.parametrize(
    ("stream", "protocol"),
    [(VLESS, "vless"), (VLESS_VISION, "vless"), (VLESS_MUX, "vless"), (TROJAN, "trojan"), (TROJAN_V6, "trojan")],
    ids=["vless", "vless-vision", "vless-mux", "trojan", "trojan-v6"],
)
def test_vless_and_trojan_requests_at_every_split(stream: bytes, protocol: str) -> None:
    for found in feed_every_split(circumvent.detect_payload, stream, b"", HTTPS):
        _named(found, protocol)


@pytest.mark.parametrize(
    "stream",
    [
        bytes.fromhex("001d12340100000100000000000003777777076578616d706c6503636f6d0000010001"),  # DNS over TCP
        b"\x00" + bytes(40),  # zeros: no UUID
        VLESS.replace(b"\x00\x01\x01\xbb\x02", b"\x00\x07\x01\xbb\x02"),  # no such command
        VLESS.replace(b"\x02\x0bexample.com", b"\x02\x0bexam\x00le.com"),  # no domain
        TROJAN.replace(b"\r\n\x01", b"\r\n\x09"),
        TROJAN.upper(),  # not lowercase hex
        PSIPHON_CLIENT_HELLO,
        MEEK,
    ],
    ids=["dns-tcp", "zeros", "vless-command", "vless-domain", "trojan-command", "trojan-upper", "tls", "http"],
)
def test_other_streams_are_not_vless_or_trojan(stream: bytes) -> None:
    assert feed_stream(circumvent.detect_payload, stream, b"", HTTPS) is None


def test_vless_over_websocket_is_named_through_the_frames() -> None:
    """V2Ray/Xray's VLESS over WebSocket (decrypted, or in the clear): the WebSocket detector hands the unwrapped
    message to the same check."""
    detectors = stream_detectors(shipped_lists())
    found = None
    for detect in detectors:
        found = found or feed_stream(detect, HANDSHAKE + frame(VLESS, opcode=2), ACCEPT, meta(80))
    assert found is not None and (found.protocol, found.detector) == ("vless", "websocket+circumvent"), found


def test_not_a_tcp_stream() -> None:
    view = FlowView(meta(443, Transport.UDP), b"", b"", [PSIPHON_CLIENT_HELLO])
    assert circumvent.detect(view) is None
