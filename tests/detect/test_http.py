"""Tests for egress.detect.http: request and response heads from stream prefixes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress.detect import http
from egress.detect.base import MORE

# Client side of flow 192.168.1.103:1714 -> 192.168.1.146:8080 in tunnel/ndpi_http_connect.pcap (head only).
CONNECT_REQUEST = (
    b"CONNECT apache.org:443 HTTP/1.1\r\n"
    b"User-Agent: Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:92.0) Gecko/20100101 Firefox/92.0\r\n"
    b"Proxy-Connection: keep-alive\r\nConnection: keep-alive\r\nHost: apache.org:443\r\n\r\n"
)
CONNECT_RESPONSE = b"HTTP/1.0 200 Connection Established\r\nProxy-agent: Apache/2.4.41 (Ubuntu)\r\n\r\n\x16\x03\x03\x00"


def test_connect_request() -> None:
    request = http.parse_request(CONNECT_REQUEST + b"\x16\x03\x01")
    assert isinstance(request, http.HttpRequest)
    assert (request.method, request.target, request.version) == ("CONNECT", "apache.org:443", "HTTP/1.1")
    assert request.headers["host"] == "apache.org:443"
    assert request.headers["proxy-connection"] == "keep-alive"
    assert request.body_offset == len(CONNECT_REQUEST)


def test_response_with_body_offset() -> None:
    response = http.parse_response(CONNECT_RESPONSE)
    assert isinstance(response, http.HttpResponse)
    assert (response.version, response.status, response.reason) == ("HTTP/1.0", 200, "Connection Established")
    assert CONNECT_RESPONSE[response.body_offset :] == b"\x16\x03\x03\x00"


def test_repeated_fields_are_joined_and_bare_lf_accepted() -> None:
    request = http.parse_request(b"GET / HTTP/1.1\nAccept: a\nACCEPT: b\n\n")
    assert isinstance(request, http.HttpRequest)
    assert request.headers == {"accept": "a, b"}


@pytest.mark.parametrize("end", [0, 1, 3, 8, 40, len(CONNECT_REQUEST) - 1])
def test_incomplete_request_is_more(end: int) -> None:
    assert http.parse_request(CONNECT_REQUEST[:end]) is MORE


@pytest.mark.parametrize(
    "data",
    [
        b"\x16\x03\x01\x02\x00",
        b"SSH-2.0-OpenSSH\r\n",
        b"GETX / HTTP/1.1\r\n\r\n",
        b"GET / SPDY/3\r\n\r\n",
        b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
        b'{"id":1,"method":"mining.subscribe"}\n',
    ],
)
def test_not_a_request(data: bytes) -> None:
    assert http.parse_request(data) is None


def test_head_too_long_is_not_http() -> None:
    assert http.parse_request(b"GET / HTTP/1.1\r\nX: " + b"a" * http.HEAD_MAX) is None


def test_cheap_checks() -> None:
    assert http.looks_like_http_request(b"PROPFIND /x HTTP/1.1")
    assert not http.looks_like_http_request(b"GET")
    assert http.looks_like_http_response(b"HTTP/1.1 101 Switching")
    assert not http.looks_like_http_response(b"HTTP/2 200")
    assert http.parse_response(b"HTTP/1.1 2x0 OK\r\n\r\n") is None


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    http.parse_request(data)
    http.parse_response(data)
    http.parse_request(b"GET / HTTP/1.1\r\n" + data)
    http.parse_response(b"HTTP/1.1 200 OK\r\n" + data)
