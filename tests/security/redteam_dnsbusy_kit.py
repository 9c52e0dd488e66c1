"""Programs of test_redteam_dnstcp_busy: TCP connections to the gateway's resolver that are never idle, and a probe
of another sandbox's DNS.

`hold_main` (sandbox ``agent``) opens connections to the resolver's port from one source address, each with a
tiny receive buffer, sends each `QUERIES` queries at once and never reads: the resolver's answers fill the socket
and its write buffer, and its handler waits in ``drain`` (busy: being answered, in the bound's eyes) for as long
as the connection lives; no read timeout runs meanwhile. It says ``held <n>`` once it has them, and opens again
each one that is closed, until it is stopped.
`probe_main` (sandbox ``builder``'s address) asks an allowed name over new TCP connections and over UDP and
prints one JSON line: the rcode of each, or what went wrong.
"""

from __future__ import annotations

import json
import selectors
import socket
import struct
import sys
import time

QUERIES = 2500
"""Queries sent on each held connection: the resolver answers some 1,300 before its handler waits in ``drain`` (the
rest wait unread in the socket, costing nothing)."""
STILL = 3.0
"""Seconds without a byte taken on any connection after which the flood is all the resolver will read."""
_TCP_ESTABLISHED = 1
"""``tcpi_state`` of an established connection (the first byte of ``TCP_INFO``)."""
NAME = ".".join(["x" * 50] * 3) + ".nowhere.example"
"""A long name the policy does not allow: each answer repeats it (REFUSED and its reason)."""


def _query(qid: int, name: str) -> bytes:
    from egress.detect import dns

    return dns.tcp_frame(dns.build_query(qid, name, dns.A))


def _connected(resolver: str, source: str) -> socket.socket | None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.bind((source, 0))
    sock.settimeout(5)
    try:
        sock.connect((resolver, 53))
    except OSError:
        sock.close()
        return None
    sock.setblocking(False)
    return sock


def _pour(socks: list[socket.socket], flood: bytes) -> None:
    """Send ``flood`` on each of ``socks`` at once, as far as the resolver reads it: until all went out, or none
    of them took a byte for `STILL` seconds (the resolver stopped reading them: its handlers wait in ``drain``)."""
    offsets = dict.fromkeys(socks, 0)
    by_fd = {sock.fileno(): sock for sock in socks}
    selector = selectors.DefaultSelector()
    for sock in socks:
        selector.register(sock, selectors.EVENT_WRITE)
    while selector.get_map():
        ready = selector.select(timeout=STILL)
        if not ready:
            break
        for key, _ in ready:
            sock = by_fd[key.fd]
            try:
                offsets[sock] += sock.send(flood[offsets[sock] : offsets[sock] + 65536])
            except BlockingIOError:
                continue
            except OSError:  # closed by the resolver: opened again by the caller
                selector.unregister(sock)
                continue
            if offsets[sock] >= len(flood):
                selector.unregister(sock)
    selector.close()


def _established(sock: socket.socket) -> bool:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == _TCP_ESTABLISHED


def hold_main() -> None:
    """``hold_main RESOLVER SOURCE COUNT``: COUNT connections, each one the resolver closes opened again."""
    resolver, source, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    flood = b"".join(_query(n, NAME) for n in range(QUERIES))
    held: list[socket.socket] = []
    said = False
    while True:
        for sock in [s for s in held if not _established(s)]:
            held.remove(sock)
            sock.close()
        new: list[socket.socket] = []
        while len(held) + len(new) < count:
            opened = _connected(resolver, source)
            if opened is None:
                break
            new.append(opened)
        if new:
            _pour(new, flood)
            held += new
        if not said and len(held) >= count:
            print(f"held {len(held)}", flush=True)
            said = True
        time.sleep(0.2)


def probe_main() -> None:
    """``probe_main RESOLVER SOURCE NAME TRIES``."""
    from egress.detect import dns

    resolver, source, name, tries = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    tcp: list[object] = []
    for n in range(tries):
        try:
            with socket.create_connection((resolver, 53), timeout=30, source_address=(source, 0)) as sock:
                sock.sendall(_query(4000 + n, name))
                size = struct.unpack(">H", sock.recv(2, socket.MSG_WAITALL))[0]
                tcp.append(dns.parse(sock.recv(size, socket.MSG_WAITALL)).rcode)
        except (OSError, struct.error, dns.DnsError) as error:
            tcp.append(repr(error))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind((source, 0))
        udp.settimeout(30)
        try:
            udp.sendto(dns.build_query(4242, name, dns.A), (resolver, 53))
            answer: object = dns.parse(udp.recv(4096)).rcode
        except (OSError, dns.DnsError) as error:
            answer = repr(error)
    print(json.dumps({"tcp": tcp, "udp": answer}), flush=True)
