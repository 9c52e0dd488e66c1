"""Client plumbing for the sandbox's attempts: a stub resolver, sockets, TLS, HTTP/1.1, and failure names.

Everything blocks with a short timeout (`Context.timeout`, 2 s per socket operation). Names are resolved by a
stub of our own (`resolve`: a UDP query to the nameserver in /etc/resolv.conf, which ``ip netns exec``
bind-mounts from /etc/netns/<ns>/resolv.conf) so the attempts depend on neither libc nor nsswitch.
`classify` turns what went wrong into an outcome: ``refused`` when the path said no up front (TCP reset to the
SYN, ICMP unreachable, DNS REFUSED), ``blocked`` when it cut a conversation short (reset or close after
connecting, HTTP 403, a TLS handshake hung up on), ``timeout`` when nothing answered, ``error`` otherwise.
"""

from __future__ import annotations

import errno
import os
import pathlib
import socket
import ssl
from dataclasses import dataclass, field

from egress.detect import dns
from egress.lab.topology import server

RESOLV_CONF = pathlib.Path("/etc/resolv.conf")
MAX_BODY = 8 << 20


class Failed(Exception):
    """An attempt ended without reaching its server: ``outcome`` and a one-line ``detail``."""

    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome, self.detail = outcome, detail


@dataclass(frozen=True, slots=True)
class Context:
    """How attempts run: which nameservers, which address family, which CAs to trust, how long to wait."""

    nameservers: tuple[str, ...] = ()
    """Empty: those in /etc/resolv.conf."""
    ipv6: bool = False
    cafiles: tuple[pathlib.Path, ...] = ()
    timeout: float = 2.0
    dns_port: int = 53
    notes: list[str] = field(default_factory=list)
    """What an attempt did besides its main act (a fallback address), added to its detail."""


def nameservers(ctx: Context) -> tuple[str, ...]:
    if ctx.nameservers:
        return ctx.nameservers
    found = []
    for line in RESOLV_CONF.read_text().splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] == "nameserver":
            found.append(words[1])
    if not found:
        raise Failed("error", f"no nameserver in {RESOLV_CONF}")
    return tuple(found)


def query(ctx: Context, name: str, qtype: int) -> dns.Message:
    """Ask the first nameserver (UDP, then TCP if truncated); raise Failed if it does not answer."""
    ns = nameservers(ctx)[0]
    try:
        return _query(ctx, ns, name, qtype)
    except (OSError, dns.DnsError) as error:
        outcome, detail = classify(error)
        shown = name if len(name) <= 40 else f"{name[:16]}...{name[-16:]}"
        raise Failed(outcome, f"DNS {shown} via {ns}: {detail}") from None


def _query(ctx: Context, ns: str, name: str, qtype: int) -> dns.Message:
    family = socket.AF_INET6 if ":" in ns else socket.AF_INET
    qid = int.from_bytes(os.urandom(2))
    packet = dns.build_query(qid, name, qtype)
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(ctx.timeout)
        sock.connect((ns, ctx.dns_port))
        sock.send(packet)
        while True:
            try:
                data = sock.recv(65535)
            except TimeoutError:
                raise Failed("timeout", "no answer") from None
            message = dns.parse(data)
            if message.id == qid and message.is_response:
                break
    if message.tc:  # truncated: ask again over TCP
        with socket.create_connection((ns, ctx.dns_port), ctx.timeout) as tcp:
            tcp.sendall(dns.tcp_frame(packet))
            length = int.from_bytes(recv_exactly(tcp, 2))
            message = dns.parse(recv_exactly(tcp, length))
    return message


def resolve(ctx: Context, name: str, fallback_key: str | None = None) -> str:
    """The address of ``name`` for the context's family; on a DNS refusal use the lab server's known address
    when ``fallback_key`` names one (as a miner with a hard-coded address would), noting it in ``ctx.notes``."""
    qtype = dns.AAAA if ctx.ipv6 else dns.A
    try:
        message = query(ctx, name, qtype)
        addresses = [a for r in message.answers if (a := dns.address_of(r)) and r.rtype == qtype]
        if message.rcode != dns.NOERROR or not addresses:
            rcode = dns.RCODE_NAMES.get(message.rcode, str(message.rcode))
            raise Failed("refused", f"DNS {rcode if message.rcode else 'no address'} for {name}")
        return addresses[0]
    except Failed as failure:
        if fallback_key is None:
            raise
        address = known_address(ctx, fallback_key)
        ctx.notes.append(f"{failure.detail}; used {address}")
        return address


def known_address(ctx: Context, key: str) -> str:
    """The lab server's address for the context's family, without asking DNS."""
    lab_server = server(key)
    return lab_server.v6 if ctx.ipv6 else lab_server.v4


def connect(ctx: Context, address: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(ctx.timeout)
    try:
        sock.connect((address, port))
    except OSError:
        sock.close()
        raise
    return sock


def tls(
    ctx: Context, sock: socket.socket, sni: str | None, *, verify: bool, alpn: tuple[str, ...] = ()
) -> ssl.SSLSocket:
    """Wrap ``sock`` in TLS with this SNI (None: no SNI); verify against the context's CAs when asked."""
    context = ssl.create_default_context()
    if verify:
        for cafile in ctx.cafiles:
            context.load_verify_locations(cafile=str(cafile))
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(list(alpn))
    try:
        return context.wrap_socket(sock, server_hostname=sni)
    except BaseException:
        sock.close()
        raise


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise Failed("blocked", f"connection closed after {len(data)} of {count} bytes")
        data += chunk
    return data


def recv_line(sock: socket.socket, limit: int = 1 << 16) -> bytes:
    """One line (with its newline); Failed(blocked) if the peer closes first."""
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise Failed(
                "blocked", "connection closed" + (f" after {bytes(data)[:60]!r}" if data else " before any answer")
            )
        data += chunk
        if len(data) > limit:
            raise Failed("error", "line too long")
    return bytes(data)


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def first_line(self) -> str:
        return self.body.split(b"\n", 1)[0].decode("utf-8", "replace").strip()[:200]


def http(
    sock: socket.socket, method: str, path: str, host: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> Response:
    """One HTTP/1.1 exchange on ``sock`` (Content-Length or close-delimited bodies)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "User-Agent: egress-lab/1", "Accept: */*"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    status_line = recv_line(sock).decode("latin-1").strip()
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise Failed("error", f"not an HTTP response: {status_line[:80]!r}")
    found: dict[str, str] = {}
    while line := recv_line(sock).decode("latin-1").strip():
        name, _, value = line.partition(":")
        found[name.strip().lower()] = value.strip()
    status = int(parts[1])
    if status == 101 or method == "HEAD":
        return Response(status, found, b"")
    if "content-length" in found:
        content = recv_exactly(sock, min(int(found["content-length"]), MAX_BODY))
    else:
        buffer = bytearray()
        while len(buffer) < MAX_BODY and (chunk := sock.recv(65536)):
            buffer += chunk
        content = bytes(buffer)
    return Response(status, found, content)


def http_verdict(response: Response) -> None:
    """Raise Failed unless the response is a 200: a 403 is a block, anything else an error."""
    if response.status == 403:
        raise Failed("blocked", f"HTTP 403 {response.first_line}")
    if response.status != 200:
        raise Failed("error", f"HTTP {response.status} {response.first_line}")


_REFUSED_ERRNOS = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES, errno.EPERM}
_BLOCKED_ERRNOS = {errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED}


def classify(error: BaseException) -> tuple[str, str]:
    """(outcome, detail) for an exception an attempt raised."""
    if isinstance(error, Failed):
        return error.outcome, error.detail
    if isinstance(error, ssl.SSLCertVerificationError):
        return "error", f"TLS certificate: {error.verify_message}"
    if isinstance(error, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return "blocked", "TLS: connection closed during the handshake"
    if isinstance(error, ssl.SSLError):
        return "error", f"TLS: {getattr(error, 'reason', None) or error}"
    if isinstance(error, TimeoutError):
        return "timeout", f"no answer within the timeout ({error or 'timed out'})"
    if isinstance(error, OSError) and error.errno in _REFUSED_ERRNOS:
        return "refused", f"{errno.errorcode.get(error.errno or 0, '?')}: {error.strerror}"
    if isinstance(error, OSError) and error.errno in _BLOCKED_ERRNOS:
        return "blocked", f"{errno.errorcode.get(error.errno or 0, '?')}: {error.strerror}"
    if isinstance(error, dns.DnsError):
        return "error", f"DNS: {error}"
    return "error", f"{type(error).__name__}: {error}"
