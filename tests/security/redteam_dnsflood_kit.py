"""Programs of test_redteam_dns_flood and bench/dns_flood.py: one sandbox's flood of pipelined TCP queries to the
gateway's resolver, and another sandbox's queries asked while it runs.

`flood_main` runs both in one process (so the probe asks while the flood is surely on):

- the flood (sandbox ``agent``'s address): ``CONNECTIONS`` TCP connections to the resolver, all opened first, then
  ``QUERIES`` pipelined queries for a long refused name poured on each at once; it reads the answers as they come
  (so the resolver never waits on it) until every one is answered or the connection ends;
- the probe (sandbox ``builder``'s address), from the flood's first answer until the flood ends: an allowed name
  over UDP (a stub resolver's retries: `ATTEMPT` seconds each, `ATTEMPTS` of them) then over a new TCP connection
  (`BUDGET` seconds in all), again and again. Each query's latency is measured from its first send; one not
  answered within its budget is ``null``.

It prints one JSON line: the flood's figures (queries sent and answered, seconds from the first answer to the
last) and the probe's (each query: transport, seconds or null; asked while the flood ran).

`udp_flood_main` is the UDP row's: the agent pours refused queries over UDP (`udp_pour`, a process of its own, from
`POUR_SOCKETS` source ports, as fast as it can send, its answers read and counted but never waited for) for
`POUR_SECONDS`, far more than the resolver answers, so the kernel's queue of the socket the agent's datagrams reach
stays full; builder asks allowed.lab over UDP meanwhile (the stub resolver's retries, `UDP_ATTEMPT` seconds x
`UDP_ATTEMPTS`). Same JSON line (the flood's ``sent`` is what the pourer sent, ``answered`` what came back).
"""

from __future__ import annotations

import json
import selectors
import socket
import struct
import sys
import threading
import time

CONNECTIONS = 120
"""The flood's connections (the resolver holds 128 of one sandbox)."""
QUERIES = 1200
"""Pipelined queries on each connection."""
ATTEMPT = 2.0
"""Seconds a UDP probe query waits for its answer before it is sent again."""
ATTEMPTS = 5
BUDGET = ATTEMPT * ATTEMPTS
"""Seconds a probe query may take in all (a stub resolver's 5 s x 2 attempts, glibc's default, is the same)."""
NAME = ".".join(["x" * 50] * 2) + ".nowhere.example"
"""A long name the policy does not allow: each query refused, decided, logged and recorded."""


POUR_SECONDS = 40.0
"""How long the UDP flood pours."""
POUR_SOCKETS = 16
"""The UDP flood's source ports."""
UDP_ATTEMPT = 3.0
"""Seconds a UDP probe query of the UDP row waits for its answer before it is sent again (generous: a loaded
machine)."""
UDP_ATTEMPTS = 5
UDP_BUDGET = UDP_ATTEMPT * UDP_ATTEMPTS


def _frame(qid: int, name: str) -> bytes:
    from egress.detect import dns

    return dns.tcp_frame(dns.build_query(qid, name, dns.A))


class Flood:
    """The agent's connections, poured and read in a thread of their own."""

    def __init__(self, resolver: str, source: str, connections: int, queries: int) -> None:
        self.payload = b"".join(_frame(n & 0xFFFF, NAME) for n in range(queries))
        self.expected = connections * queries
        self.socks: list[socket.socket] = []
        for _ in range(connections):
            sock = socket.create_connection((resolver, 53), timeout=30, source_address=(source, 0))
            sock.setblocking(False)
            self.socks.append(sock)
        self.answered = 0
        self.first: float | None = None
        self.last: float | None = None
        self.started = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self._run()
        finally:
            self.done.set()
            self.started.set()

    def _run(self) -> None:
        sent = dict.fromkeys(self.socks, 0)
        pending = {sock: b"" for sock in self.socks}
        by_fd = {sock.fileno(): sock for sock in self.socks}
        selector = selectors.DefaultSelector()
        for sock in self.socks:
            selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        live = len(self.socks)
        while live and self.answered < self.expected:
            ready = selector.select(timeout=30)
            if not ready:
                break  # nothing moved for 30 s: the resolver stopped
            for key, events in ready:
                sock = by_fd[key.fd]
                try:
                    if events & selectors.EVENT_WRITE:
                        sent[sock] += sock.send(self.payload[sent[sock] : sent[sock] + 65536])
                        if sent[sock] >= len(self.payload):
                            selector.modify(sock, selectors.EVENT_READ)
                    if events & selectors.EVENT_READ:
                        chunk = sock.recv(1 << 20)
                        if not chunk:
                            raise ConnectionResetError
                        pending[sock] = self._count(pending[sock] + chunk)
                except BlockingIOError:
                    continue
                except OSError:
                    selector.unregister(sock)
                    live -= 1
        selector.close()

    def _count(self, data: bytes) -> bytes:
        """Count the whole answers in ``data``; what is left of a partial one."""
        pos = 0
        while len(data) - pos >= 2:
            size = struct.unpack(">H", data[pos : pos + 2])[0]
            if len(data) - pos - 2 < size:
                break
            pos += 2 + size
            self.answered += 1
            now = time.monotonic()
            if self.first is None:
                self.first = now
                self.started.set()
            self.last = now
        return data[pos:]

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


def _udp(
    resolver: str, source: str, name: str, qid: int, attempt: float = ATTEMPT, attempts: int = ATTEMPTS
) -> float | None:
    from egress.detect import dns

    query = dns.build_query(qid, name, dns.A)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind((source, 0))
        start = time.monotonic()
        for _ in range(attempts):
            udp.sendto(query, (resolver, 53))
            deadline = time.monotonic() + attempt
            while (left := deadline - time.monotonic()) > 0:
                udp.settimeout(left)
                try:
                    answer = dns.parse(udp.recv(4096))
                except (TimeoutError, dns.DnsError):
                    break
                if answer.id == qid:
                    return time.monotonic() - start
    return None


def _tcp(resolver: str, source: str, name: str, qid: int) -> float | None:
    start = time.monotonic()
    try:
        with socket.create_connection((resolver, 53), timeout=BUDGET, source_address=(source, 0)) as sock:
            sock.settimeout(max(0.1, BUDGET - (time.monotonic() - start)))
            sock.sendall(_frame(qid, name))
            head = sock.recv(2, socket.MSG_WAITALL)
            if len(head) < 2 or not sock.recv(struct.unpack(">H", head)[0], socket.MSG_WAITALL):
                return None
    except OSError:
        return None
    return time.monotonic() - start


def flood_main() -> None:
    """``flood_main RESOLVER AGENT BUILDER NAME [CONNECTIONS QUERIES]``."""
    resolver, agent, builder, name = sys.argv[1:5]
    connections = int(sys.argv[5]) if len(sys.argv) > 5 else CONNECTIONS
    queries = int(sys.argv[6]) if len(sys.argv) > 6 else QUERIES
    flood = Flood(resolver, agent, connections, queries)
    thread = threading.Thread(target=flood.run, daemon=True)
    thread.start()
    flood.started.wait(timeout=120)
    probes: list[dict[str, object]] = []
    qid = 1000
    while not flood.done.is_set():
        for transport, ask in (("udp", _udp), ("tcp", _tcp)):
            during = not flood.done.is_set()
            took = ask(resolver, builder, name, qid)
            qid += 1
            probes.append({"transport": transport, "seconds": took, "during_flood": during})
        time.sleep(0.2)
    thread.join(timeout=60)
    flood.close()
    seconds = (flood.last - flood.first) if flood.first is not None and flood.last is not None else None
    result = {"flood": {"sent": flood.expected, "answered": flood.answered, "seconds": seconds}, "probes": probes}
    print(json.dumps(result), flush=True)


def udp_pour() -> None:
    """``udp_pour RESOLVER SOURCE SECONDS``: refused queries over UDP from `POUR_SOCKETS` source ports as fast as
    they can be sent, for SECONDS; the answers are read (counted) between sends, never waited for. Prints
    ``{"sent": N, "answered": M, "first": T, "last": T}`` (monotonic times of the first and last answer)."""
    from egress.detect import dns

    resolver, source, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    socks = []
    for _ in range(POUR_SOCKETS):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((source, 0))
        sock.setblocking(False)
        socks.append(sock)
    queries = [dns.build_query(n, NAME, dns.A) for n in range(256)]
    sent = answered = 0
    first: float | None = None
    last: float | None = None
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for sock in socks:
            for query in queries[sent & 0xF0 : (sent & 0xF0) + 16]:
                try:
                    sock.sendto(query, (resolver, 53))
                    sent += 1
                except (BlockingIOError, ConnectionRefusedError):
                    break
            while True:
                try:
                    sock.recv(4096)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                answered += 1
                last = time.monotonic()
                first = first if first is not None else last
    print(json.dumps({"sent": sent, "answered": answered, "first": first, "last": last}), flush=True)


def udp_flood_main() -> None:
    """``udp_flood_main RESOLVER AGENT BUILDER NAME [SECONDS]``: the UDP row (module docstring)."""
    import subprocess

    resolver, agent, builder, name = sys.argv[1:5]
    seconds = float(sys.argv[5]) if len(sys.argv) > 5 else POUR_SECONDS
    code = "from tests.security.redteam_dnsflood_kit import udp_pour; udp_pour()"
    pour = subprocess.Popen(  # a process of its own: it takes a core, as a real flood would
        [sys.executable, "-c", code, resolver, agent, str(seconds)], stdout=subprocess.PIPE, text=True
    )
    time.sleep(min(3.0, seconds / 4))  # the resolver's queue fills first
    probes: list[dict[str, object]] = []
    qid = 1000
    while pour.poll() is None:
        took = _udp(resolver, builder, name, qid, UDP_ATTEMPT, UDP_ATTEMPTS)
        qid += 1
        probes.append({"transport": "udp", "seconds": took, "during_flood": pour.poll() is None})
        time.sleep(0.2)
    out, _ = pour.communicate(timeout=60)
    poured = json.loads(out.strip().splitlines()[-1]) if out.strip() else {"sent": 0, "answered": 0}
    span = (poured["last"] - poured["first"]) if poured.get("first") is not None else None
    result = {"flood": {"sent": poured["sent"], "answered": poured["answered"], "seconds": span}, "probes": probes}
    print(json.dumps(result), flush=True)
