"""Tests for egress.detect.tor: Tor's random SNI and link-certificate names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egress.detect import tor
from egress.detect.base import Category
from tests.detect.feeding import feed_every_split, feed_stream, meta
from tests.detect.test_tls import ANDROID_GOOGLE_HELLO, TOR_CLIENT_HELLO, TOR_SERVER_FLIGHT

# The Tor hello with its SNI relabelled to a name of the same length that has no digits, and to one with two
# separate digit runs; and the Tor server flight with one letter of the issuer name replaced by an upper-case one.
PLAIN_SNI_HELLO = TOR_CLIENT_HELLO.replace(b"www.jmts2id.com", b"www.jmtsaid.com")
DIGITS_SNI_HELLO = TOR_CLIENT_HELLO.replace(b"www.jmts2id.com", b"www.j3ts2id.com")
ODD_CERT_FLIGHT = TOR_SERVER_FLIGHT.replace(b"www.gg562izcxdvqdk.com", b"www.Gg562izcxdvqdk.com")


@pytest.mark.parametrize(
    ("client", "server", "evidence"),
    [
        (
            TOR_CLIENT_HELLO,
            TOR_SERVER_FLIGHT,
            "SNI www.jmts2id.com, certificate www.fcsyvnlemwxv5p.net issued by www.gg562izcxdvqdk.com",
        ),
        (PLAIN_SNI_HELLO, TOR_SERVER_FLIGHT, None),
        (DIGITS_SNI_HELLO, b"", "SNI www.j3ts2id.com, no ALPN"),
    ],
)
def test_tor(client: bytes, server: bytes, evidence: str | None) -> None:
    results = feed_every_split(tor.detect, client, server, meta(443))
    assert all(result == results[0] for result in results)
    found = results[0]
    assert found is not None
    assert (found.category, found.protocol, found.detector) == (Category.TUNNEL, "tor", "tor")
    if evidence is not None:
        assert found.evidence == evidence


@pytest.mark.parametrize(
    ("client", "server"),
    [
        (TOR_CLIENT_HELLO, b""),  # one digit run and no certificate seen: not enough
        (PLAIN_SNI_HELLO, b""),
        (DIGITS_SNI_HELLO, ODD_CERT_FLIGHT),  # a certificate that is not Tor's clears the flow
        (ANDROID_GOOGLE_HELLO, b""),
        (b"GET / HTTP/1.1\r\nHost: www.ab2cd3ef.com\r\n\r\n", b""),
        (TOR_CLIENT_HELLO, b"HTTP/1.1 400 Bad Request\r\n\r\n"),
    ],
)
def test_no_finding(client: bytes, server: bytes) -> None:
    assert feed_stream(tor.detect, client, server, meta(443)) is None


@given(st.binary(max_size=200), st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(client: bytes, server: bytes) -> None:
    feed_stream(tor.detect, client, server, meta(443))
    feed_stream(tor.detect, TOR_CLIENT_HELLO, b"\x16\x03\x01" + server, meta(443))
    feed_stream(tor.detect, TOR_CLIENT_HELLO[:100] + client, server, meta(443))
