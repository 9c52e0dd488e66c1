"""Circumvention tools that hide behind a CDN or inside an ordinary-looking stream, named from what shows in the
clear: the TLS handshake's cleartext (ClientHello; below TLS 1.3 the server's certificate too), and the first
bytes of a stream the gateway decrypted or a capture holds in the clear.

How each looks on the wire, and what this module reads of it:

- **Psiphon** fronted by a CDN (psiphon-tunnel-core's ``FRONTED-MEEK-OSSH``; the fronting spec may leave the SNI
  out): a ClientHello with *no SNI* that still offers HTTP's ALPN (``h2``, ``http/1.1``), to a CDN's address; the
  CDN answers with its default certificate, which names the tool's domain among its alternative names. nDPI names
  it by that name (``ndpi_content_match.c.inc``, ``psiphon3.net`` → Psiphon; its test ``psiphon3.pcap``: TLS 1.2 to
  Cloudflare, no SNI, ALPN h2/http/1.1, certificate ``sni.cloudflaressl.com`` with ``psiphon3.net``; nDPI adds the
  risks "Missing SNI" and "ALPN/SNI mismatch": an HTTP client that names no host). Protocol ``psiphon``.
- **Domain fronting without SNI** by any tool (meek's and Psiphon's technique, Fifield et al., "Blocking-resistant
  communication through domain fronting", PETS 2015 §3): the same no-SNI, HTTP-ALPN hello, answered by a CDN's
  certificate that names no known tool. Protocol ``cdn-fronting``. With an SNI, fronting puts the front's name in
  the SNI and the real one in the encrypted ``Host``: only the gateway's decrypt path sees it (`egress.decide.
  decide_fronting`), and from the ``Host`` named here when a tool's own.
- **meek** (Tor's pluggable transport, ``meek-client``): inside the TLS, HTTP ``POST`` requests carrying the
  ``X-Session-Id`` header meek-server requires (gitlab.torproject.org meek ``meek-client/meek-client.go``,
  ``req.Header.Set("X-Session-Id", ...)``). Protocol ``meek``. A ``Host`` of a known tool's domain (Snowflake's
  broker reached through a front, meek's reflector) names that tool.
- **VLESS** (V2Ray/Xray, usually over WebSocket and TLS behind a CDN): the client's first bytes of a stream are
  the request header in the clear: version 0, a 16-byte UUID, the add-ons' length and protobuf, a command (1 TCP,
  2 UDP, 3 mux), a port, an address type (1 IPv4, 2 domain, 3 IPv6) and the address (XTLS/Xray-core
  ``proxy/vless/encoding/encoding.go``, ``EncodeRequestHeader``). Protocol ``vless``. **Trojan**: ``hex(SHA-224
  (password))`` (56 hex digits), CRLF, a SOCKS5-style command and address, CRLF (trojan-gfw.github.io, "The Trojan
  Protocol"). Protocol ``trojan``. Both are run by the WebSocket detector on unwrapped frames too.

Snowflake's data path is WebRTC (DTLS over UDP to volunteers' addresses): it names no host, and only its broker
and its proxies' WebSocket server name the tool (``TOOLS``). Known gaps (docs/tunnels.md): with TLS 1.3 the
certificate is encrypted, so a no-SNI hello is only the oddity (the gateway's ``tls-no-sni`` reason); a
fronting client that sends the front's name as SNI is ordinary TLS to a CDN unless the gateway decrypts it.
"""

from __future__ import annotations

import re
from typing import Final

from egress.detect import http, tls
from egress.detect.base import MORE, Category, Finding, FlowView, Result, Transport, evidence

NAME: Final = "circumvent"

TOOLS: Final = (
    ("psiphon3.net", "psiphon"),  # nDPI ndpi_content_match.c.inc (Psiphon)
    ("psiphon.ca", "psiphon"),  # the project's own site and its clients' update hosts
    ("snowflake-broker.torproject.net", "snowflake"),  # Snowflake's broker (snowflake client -url)
    ("snowflake.torproject.net", "snowflake"),  # Snowflake proxies' WebSocket relay (wss://snowflake.torproject.net/)
    ("snowflake.torproject.org", "snowflake"),
    ("meek.azureedge.net", "meek"),  # Tor Browser's meek-azure reflector (Host behind ajax.aspnetcdn.com)
    ("meek-reflect.appspot.com", "meek"),  # meek-google's former reflector
)
"""(domain, tool): a certificate name, ``Host`` or SNI equal to the domain or below it names the tool."""

CDNS: Final = (
    "cloudflaressl.com",  # Cloudflare's default certificate (sni.cloudflaressl.com)
    "cloudflare.com",
    "cloudfront.net",  # Amazon CloudFront
    "fastly.net",  # Fastly (*.global.ssl.fastly.net)
    "fastlylb.net",
    "akamai.net",  # Akamai (a248.e.akamai.net)
    "akamaized.net",
    "akamaiedge.net",
    "azureedge.net",  # Azure CDN
    "azurefd.net",  # Azure Front Door
    "appspot.com",  # Google App Engine
    "google.com",
)
"""Names of CDN edges' own certificates: a certificate naming one of these (or below) is a CDN's."""
CDN_ISSUERS: Final = ("Cloudflare Inc", "Amazon", "Microsoft Azure", "GTS CA", "Google Trust Services")
"""Issuer common-name prefixes of certificates CDNs issue for their own edges and customers."""

HTTP_ALPN: Final = frozenset({"h2", "http/1.1", "http/1.0", "h3"})
EXT_ESNI, EXT_ECH = 0xFFCE, 0xFE0D
"""Draft ESNI and Encrypted ClientHello (draft-ietf-tls-esni): a hidden name is not a missing one."""

_LOWER_HEX: Final = re.compile(rb"[0-9a-f]{56}\r\n")
_MEEK_HEADER: Final = "x-session-id"
_VLESS_COMMANDS, _VLESS_ADDRESSES = (1, 2, 3), {1: 4, 3: 16}
_UUID_VERSIONS, _ADDONS_MAX = (4, 5), 40
"""Xray's ids are UUIDs (version 4, or version 5 made from a configured string); its only add-on is the flow
name in protobuf (``xtls-rprx-vision``: 18 bytes)."""
_TROJAN_COMMANDS, _TROJAN_ADDRESSES = (1, 3), {1: 4, 4: 16}
"""Trojan's CONNECT and UDP ASSOCIATE; SOCKS5 address types (RFC 1928 §5): 1 IPv4, 3 domain, 4 IPv6."""


def _tool(name: str) -> str | None:
    name = name.lower().rstrip(".").removeprefix("*.")
    return next((tool for domain, tool in TOOLS if name == domain or name.endswith("." + domain)), None)


def _cdn(names: list[str], issuer: str | None) -> bool:
    bare = [name.lower().removeprefix("*.") for name in names]
    if any(name == cdn or name.endswith("." + cdn) for name in bare for cdn in CDNS):
        return True
    return issuer is not None and issuer.startswith(CDN_ISSUERS)


def _found(protocol: str, text: str) -> Finding:
    return Finding(Category.TUNNEL, protocol, NAME, evidence(text))


def _judge_tls(view: FlowView) -> Result:
    hello = tls.parse_client_hello(view.client, partial=view.complete)
    if not isinstance(hello, tls.ClientHello):
        return MORE if hello is MORE and not view.complete else None
    if hello.sni:
        tool = _tool(hello.sni)
        return _found(tool, f"TLS SNI {hello.sni}: {tool}'s own domain") if tool else None
    if EXT_ESNI in hello.extensions or EXT_ECH in hello.extensions or HTTP_ALPN.isdisjoint(hello.alpn):
        return None  # a hidden name, or no HTTP asked for: not the fronting shape
    server = tls.parse_server_hello(view.server, partial=view.complete)
    if server is MORE:
        return None if view.complete else MORE
    if not isinstance(server, tls.ServerHello) or not server.certificates:
        return None  # TLS 1.3 (the certificate is encrypted) or no certificate: only the oddity shows
    leaf = server.certificates[0]
    names = list(tls.cert_alt_names(leaf))
    issuer, subject = tls.cert_names(leaf) or (None, None)
    if subject:
        names.insert(0, subject)
    alpn = ",".join(hello.alpn)
    tool = next((found for found in map(_tool, names) if found), None)
    if tool is not None:
        named = next(name for name in names if _tool(name))
        text = f"TLS without SNI, ALPN {alpn}; certificate {subject or '-'} names {named}: {tool} fronted by a CDN"
        return _found(tool, text)
    if _cdn(names, issuer):
        text = f"TLS without SNI, ALPN {alpn}, to a CDN (certificate {subject or '-'} by {issuer or '-'})"
        return _found("cdn-fronting", text + ": the host is named only inside (domain fronting)")
    return None


def _judge_http(view: FlowView) -> Result:
    request = http.request_of(view)
    if request is MORE:
        return None if view.complete else MORE
    if not isinstance(request, http.HttpRequest):
        return None
    host = request.headers.get("host", "").rsplit(":", 1)[0]
    tool = _tool(host) if host else None
    if tool is not None:
        return _found(tool, f"HTTP {request.method} {request.target[:40]} Host {host}: {tool}'s own domain")
    if request.method == "POST" and _MEEK_HEADER in request.headers:
        return _found("meek", f"HTTP POST {request.target[:40]} Host {host or '-'} with X-Session-Id (meek-client)")
    return None


def vless(data: bytes) -> bool | None:
    """Whether ``data`` opens with a VLESS request header; None while too short to tell."""
    if not data or data[0] != 0:
        return False
    if len(data) < 18:
        return None
    if data[7] >> 4 not in _UUID_VERSIONS or data[9] & 0xC0 != 0x80 or data[17] > _ADDONS_MAX:
        return False  # an RFC 9562 UUID (version 4 generated, 5 from a configured string); small add-ons
    at = 18 + data[17]  # after version, UUID, add-ons length and add-ons
    if len(data) < at + 4:
        return None
    command, port, kind = data[at], int.from_bytes(data[at + 1 : at + 3]), data[at + 3]
    if command not in _VLESS_COMMANDS or (command != 3 and port == 0):
        return False
    if command == 3:
        return True  # mux: no address follows
    if kind in _VLESS_ADDRESSES:
        return len(data) >= at + 4 + _VLESS_ADDRESSES[kind] or None
    if kind != 2:
        return False
    if len(data) < at + 5:
        return None
    size = data[at + 4]
    domain = data[at + 5 : at + 5 + size]
    if len(domain) < size:
        return None
    return size > 0 and all(0x21 <= byte < 0x7F for byte in domain)


def trojan(data: bytes) -> bool | None:
    """Whether ``data`` opens with a Trojan request; None while too short to tell."""
    head = data[:58]
    if not all(48 <= byte <= 57 or 97 <= byte <= 102 for byte in head[:56]) or not b"\r\n".startswith(head[56:58]):
        return False
    if len(data) < 61:
        return None
    if not _LOWER_HEX.match(data) or data[58] not in _TROJAN_COMMANDS:
        return False
    kind = data[59]
    if kind == 3:
        end = 61 + data[60]
    elif kind in _TROJAN_ADDRESSES:
        end = 60 + _TROJAN_ADDRESSES[kind]
    else:
        return False
    if len(data) < end + 4:
        return None
    return data[end + 2 : end + 4] == b"\r\n"


def detect_payload(view: FlowView) -> Result:
    """VLESS or Trojan at the start of a client stream (decrypted TLS, an unwrapped WebSocket message, a capture)."""
    data = view.client
    if not data:
        return None if view.complete else MORE
    for protocol, opens in (("vless", vless), ("trojan", trojan)):
        seen = opens(data)
        if seen:
            return _found(protocol, f"{protocol} request header: {data[:24].hex()}")
        if seen is None and not view.complete:
            return MORE
    return None


def detect(view: FlowView) -> Result:
    """A TCP stream whose TLS handshake or HTTP request names a circumvention tool or fronting (module docstring)."""
    if view.meta.transport is not Transport.TCP:
        return None
    data = view.client
    if not data:
        return None if view.complete else MORE
    if data[0] == tls.HANDSHAKE:
        return _judge_tls(view)
    if http.looks_like_http_request(data):
        return _judge_http(view)
    short = len(data) <= 8 and any(method.startswith(data) for method in http.METHODS)
    return MORE if short and not view.complete else None
