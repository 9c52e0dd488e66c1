"""What a stream has been shown to be, for the engine's judgement of a flow its detectors could not decide.

A detector that cannot rule its protocol out keeps answering `MORE` (a pool that skips junk before ``{`` may be
behind any bytes). When the engine's cap stops the inspection of such a flow, `identify` says whether the stream
is at least a protocol the policy can name; if it is none, the flow is *unidentified*, not clean
(`egress.detect.engine.FlowInspector.unidentified`). Only evidence that more bytes cannot undo counts:

- ``tls``: the client stream starts with a whole ClientHello (`tls.starts_with_hello`; a record header alone is
  not TLS), and the server's first bytes, if any, are a TLS handshake or alert record (RFC 8446 §5.1);
- ``http``: a whole HTTP/1.x request head (RFC 9112 §2-§5), and a server that answers with a status line;
- ``ssh``: an SSH identification string on each side that spoke (RFC 4253 §4.2).
"""

from __future__ import annotations

from typing import Final

from egress.detect import http, tls
from egress.detect.base import FlowView

TLS: Final = "tls"
HTTP: Final = "http"
SSH: Final = "ssh"
_TLS_SERVER_FIRST: Final = (tls.HANDSHAKE, 21)
"""Handshake or alert: what a TLS server's first record can be."""


def identify(view: FlowView) -> str | None:
    """The protocol the stream has been shown to be (`TLS`, `HTTP`, `SSH`), or None when it is none of them."""
    client, server = view.client, view.server
    if client[:1] == bytes((tls.HANDSHAKE,)) and tls.starts_with_hello(client):
        if not server or (server[0] in _TLS_SERVER_FIRST and server[1:2] == b"\x03"):
            return TLS
        return None
    if client.startswith(b"SSH-") and (not server or server.startswith(b"SSH-")):
        return SSH
    if isinstance(http.parse_request(client), http.HttpRequest) and (
        not server or http.looks_like_http_response(server)
    ):
        return HTTP
    return None
