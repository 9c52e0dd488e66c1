"""PPTP: the control connection of a Point-to-Point Tunneling Protocol VPN, on any TCP port.

Signature (RFC 2637 §1.4 and §2): every control message opens with its length (2 bytes), the PPTP message type
(1, control message), the magic cookie 0x1A2B3C4D and the control message type (1-15, reserved bytes zero);
a session opens with Start-Control-Connection-Request (type 1, 156 bytes) from the client, answered by the Reply
(type 2). nDPI's ``protocols/pptp.c`` matches the same header (the Request only). The tunnel's data then flows
in enhanced GRE (`egress.detect.encap`), which a sandbox's firewall drops as an IP protocol.
"""

from __future__ import annotations

from typing import Final

from egress.detect.base import MORE, Category, Finding, FlowView, Result, Transport, evidence

NAME = "pptp"
_HEADER: Final = b"\x00\x01\x1a\x2b\x3c\x4d"
"""Message type 1 (control) and the magic cookie, after the 2-byte length."""
_NAMES: Final = {1: "Start-Control-Connection-Request", 2: "Start-Control-Connection-Reply"}


def _judge(data: bytes) -> Result:
    """A finding when ``data`` opens with a PPTP control message, ``MORE`` while too short to tell."""
    if len(data) < 12:
        return MORE if _HEADER.startswith(data[2:8]) or len(data) < 2 else None
    length, kind = int.from_bytes(data[:2]), int.from_bytes(data[8:10])
    if data[2:8] != _HEADER or not 1 <= kind <= 15 or data[10:12] != b"\x00\x00" or length < 16:
        return None
    what = _NAMES.get(kind, f"control message {kind}")
    return Finding(Category.TUNNEL, "pptp", NAME, evidence(f"PPTP {what}, {length} bytes"))


def detect(view: FlowView) -> Result:
    """A TCP flow whose either side opens with a PPTP control message."""
    if view.meta.transport is not Transport.TCP:
        return None
    client = _judge(view.client) if view.client else MORE
    server = _judge(view.server) if view.server else MORE
    for result in (client, server):
        if isinstance(result, Finding):
            return result
    # Both sides must be ruled out: a server that speaks first must not hide the client's request.
    return None if view.complete or (client is None and server is None) else MORE
