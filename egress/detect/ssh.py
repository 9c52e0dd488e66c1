"""SSH on a port other than 22: an interactive shell or a port-forwarding tunnel out of the sandbox.

Signature: RFC 4253 §4.2, each side opens with an identification string ``SSH-protoversion-softwareversion``
where protoversion is ``2.0``, or ``1.99`` for a server that also speaks SSH-1. Both sides send it first thing, so
it sits at the start of either stream. A server may send other lines before it (RFC 4253 §4.2); OpenSSH does
not, and we do not look past them. A client may send a stray CR/LF first (seen in nDPI's ssh_unidirectional
capture), which we skip.

SSH to port 22 gives no finding here: whether that host is allowed is the policy's call, by destination.

Known gap: whether a session carries forwarded ports (``ssh -L``/``-R``/``-D``) is only visible after the key
exchange, inside the encrypted channel requests (RFC 4254 §7); nothing in the clear shows it.
"""

from __future__ import annotations

from egress.detect.base import MORE, Category, Finding, FlowView, Result, Transport, evidence

NAME = "ssh"
SSH_PORT = 22
_BANNERS = (b"SSH-2.0-", b"SSH-1.99-")
_LINE_MAX = 255
"""RFC 4253 §4.2: the identification string is at most 255 characters with its CR LF; we wait for it whole so
the evidence does not depend on where a segment ended."""


def _banner(data: bytes) -> bool | None:
    """True: starts with an SSH identification string; None: too short to tell; False: cannot be one."""
    data = data.lstrip(b"\r\n")
    for banner in _BANNERS:
        if data.startswith(banner):
            return True
        if banner.startswith(data):
            return None
    return False


def detect(view: FlowView) -> Result:
    """A TCP flow whose either side opens with an SSH identification string, off port 22."""
    meta = view.meta
    if meta.transport is not Transport.TCP or meta.dport == SSH_PORT or meta.sport == SSH_PORT:
        return None
    client = _banner(view.client) if view.client else None
    server = _banner(view.server) if view.server else None
    for seen, data in ((client, view.client), (server, view.server)):
        if seen:
            text = data.lstrip(b"\r\n")
            end = text.find(b"\n", 0, _LINE_MAX)
            if end < 0 and len(text) < _LINE_MAX and not view.complete:
                return MORE
            line = text[: end if end >= 0 else _LINE_MAX].rstrip(b"\r")
            return Finding(Category.TUNNEL, "ssh-nonstandard-port", NAME, evidence(line))
    # Both sides must have been ruled out: a server that speaks junk first must not hide the client's banner.
    if (client is False and server is False) or view.complete:
        return None
    return MORE
