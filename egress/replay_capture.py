"""A capture's flows as the questions the gateway would be asked (`egress.replay.Question`), for `egress rules
replay --capture`.

One pass over the frames (`egress.capture`) finds what the gateway decides on: each DNS question and the
addresses its answer gave (the bindings SNI and Host are checked against, so ``bound`` is known here, unlike in a
record), and each TCP connection's first client bytes: a ClientHello's SNI, an HTTP request's Host, or neither (a
stream with no name, judged with the names bound to its address). The detectors' findings come from the scanner
(`egress.scanner`), the same pass `egress scan` makes, and are asked about as the flows they were found on.
UDP other than DNS, ICMP and other IP protocols are the firewall's (nftables) to decide: counted, not replayed.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from typing import Final

from egress.capture.packet import ACK, SYN, TCP, UDP, Defragmenter, Malformed, decode
from egress.capture.reader import CaptureError, read_batches
from egress.capture.reassembly import TcpStream
from egress.detect import dns, http, tls
from egress.detect.base import MORE, Transport
from egress.detect.registry import DetectorSet
from egress.replay import Kind, Question
from egress.scanner import FileStats, Scanner

HEAD_BYTES: Final = 16384
"""Client bytes gathered per TCP connection: a ClientHello or a request head fits (the proxy waits as long)."""
_DNS_PORT: Final = 53


@dataclass(frozen=True, slots=True)
class CaptureQuestion:
    ts: float
    question: Question
    sport: int


@dataclass(slots=True)
class CaptureSummary:
    path: str
    packets: int = 0
    flows: int = 0
    """TCP connections and DNS questions turned into questions."""
    firewall: int = 0
    """Packets of UDP (other than DNS), ICMP and other protocols: the firewall's to decide, not replayed."""
    error: str | None = None


@dataclass(slots=True)
class _Conn:
    ts: float
    client: str
    cport: int
    server: str
    sport: int
    stream: TcpStream = field(default_factory=TcpStream)
    head: bytes = b""
    names: frozenset[str] = frozenset()
    """Names the capture's DNS had answered with ``server`` for ``client`` when the connection started."""


def _text(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


class _Pass:
    def __init__(self, summary: CaptureSummary) -> None:
        self.summary = summary
        self.defrag = Defragmenter()
        self.conns: dict[tuple[str, int, str, int], _Conn] = {}
        self.bindings: dict[tuple[str, str], set[str]] = {}
        self.asked: dict[tuple[str, int, int], str] = {}
        """(client, port, DNS id) -> the question's name, until its answer binds the name to addresses."""
        self.out: list[CaptureQuestion] = []

    def frame(self, ts: float, linktype: int, frame: bytes) -> None:
        try:
            segment = decode(linktype, frame, ts, self.defrag)
        except (Malformed, IndexError):
            return
        if segment is None:
            return
        proto, src, dst, sport, dport, payload, flags, seq = segment
        if proto == UDP and _DNS_PORT in (sport, dport) and payload:
            self._dns(ts, _text(src), sport, _text(dst), dport, payload)
        elif proto == TCP:
            self._tcp(ts, _text(src), sport, _text(dst), dport, payload, flags, seq)
        else:
            self.summary.firewall += 1

    def _dns(self, ts: float, src: str, sport: int, dst: str, dport: int, payload: bytes) -> None:
        message = dns.parse_partial(payload)
        if message is None or not message.questions:
            return
        if not message.is_response:
            name = message.questions[0].hostname
            if name is None:
                question = Question(Kind.MALFORMED, src, dst, dport, message.questions[0].name)
            else:
                question = Question(Kind.DNS, src, dst, dport, name)
                self.asked[(src, sport, message.id)] = name
            self.summary.flows += 1
            self.out.append(CaptureQuestion(ts, question, sport))
            return
        name = self.asked.pop((dst, dport, message.id), None)
        if name is not None and message.rcode == dns.NOERROR:
            for address, _ in dns.addresses(message):
                self.bindings.setdefault((dst, address), set()).add(name)

    def _tcp(self, ts: float, src: str, sport: int, dst: str, dport: int, payload: bytes, flags: int, seq: int) -> None:
        conn = self.conns.get((src, sport, dst, dport))
        if conn is None and flags & SYN and not flags & ACK:
            names = frozenset(self.bindings.get((src, dst), ()))
            conn = self.conns[(src, sport, dst, dport)] = _Conn(ts, src, sport, dst, dport, names=names)
            conn.stream.syn(seq)
            return
        if conn is None or not payload or len(conn.head) >= HEAD_BYTES:
            return
        conn.head += conn.stream.add(seq, payload)[: HEAD_BYTES - len(conn.head)]

    def finish(self) -> None:
        for conn in self.conns.values():
            self.summary.flows += 1
            self.out.append(CaptureQuestion(conn.ts, _question(conn), conn.cport))
        self.out.sort(key=lambda item: item.ts)


def _question(conn: _Conn) -> Question:
    """What the proxy's gate asks of a connection with these first client bytes (`egress.proxy.gate.Gate`)."""
    src, dst, dport, head = conn.client, conn.server, conn.sport, conn.head
    if tls.looks_like_tls(head):
        hello = tls.parse_client_hello(head, partial=True)
        if isinstance(hello, tls.ClientHello):
            return Question(Kind.TLS, src, dst, dport, hello.sni, hello.sni in conn.names if hello.sni else False)
    if http.looks_like_http_request(head):
        request = http.parse_request(head)
        if request is not MORE and isinstance(request, http.HttpRequest):
            host = request.headers.get("host", "").rsplit(":", 1)[0].strip().lower().rstrip(".")
            return Question(Kind.HTTP, src, dst, dport, host or None, bool(host) and host in conn.names)
    return Question(Kind.RAW, src, dst, dport, names=conn.names)


def capture_questions(path: str, detectors: DetectorSet) -> tuple[list[CaptureQuestion], CaptureSummary]:
    """The questions of every TCP connection and DNS question in the capture at ``path``, oldest first, and one
    per TCP finding of the scanner (`Kind.FINDING`); a DNS finding goes with the question it was found on (the
    latest one from that client's port by then), which the resolver decides with it (`decide_dns`)."""
    summary = CaptureSummary(path)
    run = _Pass(summary)
    try:
        for batch in read_batches(path):
            for ts, linktype, frame in batch:
                summary.packets += 1
                run.frame(ts, linktype, frame)
    except CaptureError as error:
        summary.error = str(error)
    run.finish()
    out = run.out
    for found in Scanner(detectors).scan(path, FileStats(path)):
        meta, finding = found.meta, found.finding
        if meta.transport is Transport.TCP:
            question = Question(Kind.FINDING, meta.src, meta.dst, meta.dport, finding=finding)
            out.append(CaptureQuestion(found.ts, question, meta.sport))
            continue
        if meta.transport is not Transport.UDP or meta.dport != _DNS_PORT:
            continue  # the firewall's: the drop logger judges what nftables dropped
        asked = [
            index
            for index, item in enumerate(out)
            if item.question.kind is Kind.DNS and (item.question.src, item.sport) == (meta.src, meta.sport)
        ]
        if asked:
            at = max((i for i in asked if out[i].ts <= found.ts), default=asked[0], key=lambda i: out[i].ts)
            item = out[at]
            out[at] = CaptureQuestion(item.ts, dataclasses.replace(item.question, finding=finding), item.sport)
    out.sort(key=lambda item: item.ts)
    return out, summary
