"""Tor relay connections (the onion-routing link protocol, which rides on TLS).

Signature, from Tor's source: a Tor client names a fresh random host in the TLS server_name extension,
``crypto_random_hostname(4, 25, "www.", ".com")`` (``src/lib/tls/tortls_openssl.c``, ``tor_tls_new``), and a relay
presents a link certificate whose subject is ``crypto_random_hostname(8, 20, "www.", ".net")`` and whose issuer is
``crypto_random_hostname(8, 20, "www.", ".com")`` (``src/lib/tls/tortls.c``,
``tor_tls_context_init_certificates``). The random part is base32 (RFC 4648 §6 alphabet, lowercased by Tor's
``base32_encode``): letters and the digits 2-7 only. nDPI (``src/lib/protocols/tor.c``, ``ndpi_is_tls_tor``)
keys on the same ``www.<random>.<tld>`` names and calls a name random when its label has two separate digit runs.

Rules, on a TLS ClientHello whose SNI is ``www.<4-25 base32 chars>.com``:

- when the server's certificate is visible (TLS 1.2 and older) the flow is Tor if issuer and subject common names
  are both ``www.<8-20 base32 chars>.net|com`` and differ; any other certificate clears it;
- when it is not (TLS 1.3, or only the client side was captured) the flow is Tor if the hello offers no ALPN
  (browsers and HTTP clients do) and the random label holds at least two separate runs of digits.

Gap: Tor bridges with pluggable transports (obfs4, meek, snowflake) do not use this TLS shape.
"""

from __future__ import annotations

import re

from egress.detect import tls
from egress.detect.base import MORE, Category, Finding, FlowView, Result, Transport, _More, evidence

NAME = "tor"
_SNI = re.compile(r"www\.([a-z2-7]{4,25})\.com")
_CERT_NAME = re.compile(r"www\.[a-z2-7]{8,20}\.(?:net|com)")
_DIGIT_RUNS = re.compile(r"[2-7]+")


def _random_label(label: str) -> bool:
    return len(_DIGIT_RUNS.findall(label)) >= 2


def _tor_certificate(certificate: bytes) -> tuple[str, str] | None:
    names = tls.cert_names(certificate)
    if names is None:
        return None
    issuer, subject = names
    if issuer and subject and issuer != subject and _CERT_NAME.fullmatch(issuer) and _CERT_NAME.fullmatch(subject):
        return issuer, subject
    return None


def _client_hello(view: FlowView) -> tls.ClientHello | None | _More:
    client = view.client
    if len(client) >= 5 and tls.looks_like_tls(client):
        record_end = 5 + int.from_bytes(client[3:5])
        if len(client) >= record_end and client.find(b"www.", 5, record_end) < 0:
            return None  # the whole first record is in and names no www. host: skip the full parse
    return tls.parse_client_hello(client, partial=view.complete)


def _by_certificate(sni: str, certificate: bytes) -> Finding | None:
    names = _tor_certificate(certificate)
    if names is None:
        return None
    text = f"SNI {sni}, certificate {names[1]} issued by {names[0]}"
    return Finding(Category.TUNNEL, "tor", NAME, evidence(text))


def detect(view: FlowView) -> Result:
    """A TCP flow whose TLS handshake has Tor's random SNI and, when visible, Tor's certificate names."""
    if view.meta.transport is not Transport.TCP:
        return None
    hello = _client_hello(view)
    if not isinstance(hello, tls.ClientHello):
        return hello
    sni = hello.sni or ""
    shape = _SNI.fullmatch(sni)
    if shape is None:
        return None
    if view.server:
        answer = tls.parse_server_hello(view.server, partial=view.complete)
        if not isinstance(answer, tls.ServerHello):
            return answer if answer is MORE else None
        if answer.certificates:
            return _by_certificate(sni, answer.certificates[0])
    elif not view.complete:
        return MORE
    # No certificate to see (TLS 1.3, or only the client's side): the hello alone decides.
    if not hello.alpn and _random_label(shape.group(1)):
        return Finding(Category.TUNNEL, "tor", NAME, evidence(f"SNI {sni}, no ALPN"))
    return None
