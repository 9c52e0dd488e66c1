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
import socket
import struct
import sys
import time

QUERIES = 2500
"""Queries sent on each held connection: the resolver answers some 1,300 before its handler waits in ``drain`` (the
rest wait unread in the socket, costing nothing)."""
_TCP_ESTABLISHED = 1
"""``tcpi_state`` of an established connection (the first byte of ``TCP_INFO``)."""
NAME = ".".join(["x" * 50] * 3) + ".nowhere.example"
"""A long name the policy does not allow: each answer repeats it (REFUSED and its reason)."""


def _query(qid: int, name: str) -> bytes:
    from egress.detect import dns

    return dns.tcp_frame(dns.build_query(qid, name, dns.A))


def _flooded(resolver: str, source: str, flood: bytes) -> socket.socket | None:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
    sock.bind((source, 0))
    sock.settimeout(5)
    try:
        sock.connect((resolver, 53))
        sock.sendall(flood)
    except TimeoutError:
        pass  # what the resolver has not read waits in the buffers: the connection stays
    except OSError:
        sock.close()
        return None
    return sock


def _established(sock: socket.socket) -> bool:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] == _TCP_ESTABLISHED


def hold_main() -> None:
    """``hold_main RESOLVER SOURCE COUNT``: COUNT connections, each one the resolver closes opened again."""
    resolver, source, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    flood = b"".join(_query(n, NAME) for n in range(QUERIES))
    held: list[socket.socket] = []
    refused = 0
    said = False
    while True:
        for sock in [s for s in held if not _established(s)]:
            held.remove(sock)
            sock.close()
        while len(held) < count:
            opened = _flooded(resolver, source, flood)
            if opened is None:
                refused += 1
                break
            held.append(opened)
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
            with socket.create_connection((resolver, 53), timeout=5, source_address=(source, 0)) as sock:
                sock.sendall(_query(4000 + n, name))
                size = struct.unpack(">H", sock.recv(2, socket.MSG_WAITALL))[0]
                tcp.append(dns.parse(sock.recv(size, socket.MSG_WAITALL)).rcode)
        except (OSError, struct.error, dns.DnsError) as error:
            tcp.append(repr(error))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind((source, 0))
        udp.settimeout(5)
        try:
            udp.sendto(dns.build_query(4242, name, dns.A), (resolver, 53))
            answer: object = dns.parse(udp.recv(4096)).rcode
        except (OSError, dns.DnsError) as error:
            answer = repr(error)
    print(json.dumps({"tcp": tcp, "udp": answer}), flush=True)
