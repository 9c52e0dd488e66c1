"""SSH on a port other than 22: an interactive shell or a port-forwarding tunnel out of the sandbox.

Signature: RFC 4253 §4.2, each side opens with an identification string ``SSH-protoversion-softwareversion``
where protoversion is ``2.0``, or ``1.99`` for a server that also speaks SSH-1. Both sides send it first thing, so
it sits at the start of either stream. A server may send other lines before it (RFC 4253 §4.2); OpenSSH does
not, and we do not look past them. A client may send a stray CR/LF first (seen in nDPI's ssh_unidirectional
capture), which we skip.

SSH to port 22 gives no finding here: whether that host is allowed is the policy's call, by destination.

Reverse SSH (`detect_reverse`, any port, 22 included): the side that opened the TCP connection acts as the SSH
server, or the side that accepted it as the SSH client: an agent that dials out and then serves a shell to whoever
it reached (NHAS reverse_ssh and similar implants), so the outside drives the sandbox. Zeek's SSH analyzer is the
anchor: it takes a KEXINIT's role from the TCP direction alone (``ssh-analyzer.pac``, ``is_server = !is_orig``;
``base/protocols/ssh/main.zeek`` pairs the client's and server's capabilities by that flag), so a KEXINIT whose
content says the other role shows the roles inverted. The content says it in the clear, before NEWKEYS (RFC 4253
§7, §8): only a client sends the key-exchange init messages (30 ``KEXDH_INIT``/``KEX_ECDH_INIT``, RFC 5656 §4; 34
and 32 of group exchange, RFC 4419 §3) and only a server the replies (31, 33); a client's KEXINIT lists
``ext-info-c`` and OpenSSH's ``kex-strict-c-v00@openssh.com``, a server's the ``-s`` forms (RFC 8308 §2.1, OpenSSH
PROTOCOL "strict key exchange extension").

Known gap: whether a session carries forwarded ports (``ssh -L``/``-R``/``-D``) is only visible after the key
exchange, inside the encrypted channel requests (RFC 4254 §7); nothing in the clear shows it, and no shape we
measured tells it apart from an interactive session within the first minute.
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


_CLIENT_KEX = frozenset({30, 32, 34})
_SERVER_KEX = frozenset({31, 33})
_CLIENT_MARKS = (b"ext-info-c", b"kex-strict-c-v00@openssh.com")
_SERVER_MARKS = (b"ext-info-s", b"kex-strict-s-v00@openssh.com")
_KEXINIT = 20
_NEWKEYS = 21
_PACKET_MAX = 35000
"""RFC 4253 §6.1: implementations must handle packets of 35000 bytes; a longer length field is not SSH."""


def _cleartext_packets(data: bytes) -> list[bytes] | None:
    """The payloads of the whole binary packets after the identification line, up to NEWKEYS; ``None`` when the
    bytes cannot be SSH's framing (RFC 4253 §6: length, padding length, payload, padding of at least 4)."""
    data = data.lstrip(b"\r\n")
    end = data.find(b"\n", 0, _LINE_MAX)
    if end < 0:
        return [] if len(data) < _LINE_MAX else None
    offset, packets = end + 1, []
    while offset + 5 <= len(data):
        length, padding = int.from_bytes(data[offset : offset + 4]), data[offset + 4]
        if not 5 <= length <= _PACKET_MAX or not 4 <= padding < length:
            return None
        if offset + 4 + length > len(data):
            break
        payload = data[offset + 5 : offset + 4 + length - padding]
        packets.append(payload)
        offset += 4 + length
        if payload[:1] == bytes([_NEWKEYS]):
            break
    return packets


def _role(packets: list[bytes]) -> tuple[str, str] | None:
    """(``client`` or ``server``, what showed it) from one side's cleartext packets, or ``None`` if not yet."""
    for payload in packets:
        kind = payload[0] if payload else 0
        if kind == _KEXINIT and len(payload) >= 21:
            size = int.from_bytes(payload[17:21])
            algorithms = payload[21 : 21 + size].split(b",")
            for marks, role in ((_CLIENT_MARKS, "client"), (_SERVER_MARKS, "server")):
                mark = next((item for item in marks if item in algorithms), None)
                if mark is not None:
                    return role, f"KEXINIT listing {mark.decode()}"
        elif kind in _CLIENT_KEX or kind in _SERVER_KEX:
            return ("client" if kind in _CLIENT_KEX else "server"), f"key exchange message {kind}"
    return None


def detect_reverse(view: FlowView) -> Result:
    """A TCP flow carrying SSH whose connecting side acts as the SSH server (or the accepting side as the client)."""
    if view.meta.transport is not Transport.TCP:
        return None
    if _banner(view.client) is False or _banner(view.server) is False:
        return None
    client = _cleartext_packets(view.client) if _banner(view.client) else []
    server = _cleartext_packets(view.server) if _banner(view.server) else []
    if client is None or server is None:
        return None
    roles = (_role(client), _role(server))
    for seen, connecting, expected in ((roles[0], True, "client"), (roles[1], False, "server")):
        if seen is not None and seen[0] != expected:
            role, shown = seen
            who = "the connecting side" if connecting else "the accepting side"
            text = f"SSH roles inverted: {who} acts as the {role} ({shown})"
            return Finding(Category.TUNNEL, "ssh-reverse", NAME, evidence(text))
    if roles[0] is not None or roles[1] is not None or view.complete:
        return None
    return MORE
