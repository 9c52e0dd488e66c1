"""Ground truth on the internet side: a tcpdump in the lab's internet namespace, proven live, parsed into what
crossed the gateway.

`Capture` runs ``tcpdump --immediate-mode -U -w`` on the internet namespace's end of the uplink (everything the
gateway forwards or proxies to the fake internet passes there), then sends a positive control (a UDP datagram
with a marker of its own, from the internet side towards the gateway's uplink address) and waits until the
control is in the file: only then is an empty result evidence rather than a capture that was not yet running.
`Crossed` is the parsed file: payload bytes per (proto, dst, dport) of packets that left the gateway towards the
internet (source: a sandbox address or the gateway's uplink, which is what the proxy and the resolver use
upstream), and a search for a marker in that payload.

Tests read dpkt directly here (not egress.capture): the ground truth must not share code with what it judges.
"""

from __future__ import annotations

import contextlib
import ipaddress
import pathlib
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import dpkt

from egress.lab.topology import GATEWAY_UP_V4, GATEWAY_UP_V6, SANDBOX_NET_V4, SANDBOX_NET_V6, UPLINK_NET_V6, Lab
from tests.waiting import eventually, scaled

_OUTBOUND_NETS = (
    ipaddress.ip_network(SANDBOX_NET_V4),
    ipaddress.ip_network(SANDBOX_NET_V6),
    ipaddress.ip_network(f"{GATEWAY_UP_V4}/32"),
    ipaddress.ip_network(UPLINK_NET_V6),  # the gateway's uplink v6 (the internet's own v6 is excluded below)
)
_INTERNET_OWN = {ipaddress.ip_address("10.203.2.2"), ipaddress.ip_address("fd00:203:2::2")}
_PROTO = {6: "tcp", 17: "udp", 1: "icmp", 58: "icmp6"}
_ND_TYPES = range(133, 138)  # IPv6 neighbour discovery: link chatter, not traffic the gateway forwarded
CONTROL_PORT = 9
"""The positive control's destination port on the gateway's uplink (discard: nothing answers)."""

CONTROL_PREFIX = b"egress-capture-control-"

Flow = tuple[str, str, int]
"""(proto, destination address, destination port; 0 for protocols without ports)."""


@dataclass(frozen=True, slots=True)
class Crossed:
    """What crossed from the gateway to the internet during a capture (outbound packets only)."""

    payload: dict[Flow, bytes] = field(default_factory=dict)
    """Every outbound packet's payload (TCP/UDP data, ICMP data after id/seq, the whole IP payload of other
    protocols), concatenated per flow in capture order (retransmissions included)."""
    packets: dict[Flow, int] = field(default_factory=dict)
    """Outbound packets per flow, payload or not (a SYN counts): contact, even when no byte of data crossed."""
    controls: frozenset[str] = frozenset()
    """Positive-control markers seen (internet → gateway uplink, UDP `CONTROL_PORT`)."""

    def bytes_to(self, dst: str | None = None, port: int | None = None, proto: str | None = None) -> int:
        """Payload bytes to ``dst`` (an address or a CIDR), ``port`` and ``proto``; None matches any."""
        return sum(len(data) for flow, data in self.payload.items() if _matches(flow, dst, port, proto))

    def packets_to(self, dst: str | None = None, port: int | None = None, proto: str | None = None) -> int:
        return sum(count for flow, count in self.packets.items() if _matches(flow, dst, port, proto))

    def contains(self, marker: bytes, dst: str | None = None) -> bool:
        """Whether ``marker`` is in the outbound payload (of one flow; to ``dst`` when given)."""
        return any(marker in data for flow, data in self.payload.items() if _matches(flow, dst, None, None))

    def table(self) -> list[tuple[str, str, int, int, int]]:
        """(proto, dst, dport, packets, payload bytes) per flow, for a failure message."""
        return sorted((*flow, self.packets[flow], len(self.payload.get(flow, b""))) for flow in self.packets)


def _matches(flow: Flow, dst: str | None, port: int | None, proto: str | None) -> bool:
    if proto is not None and flow[0] != proto:
        return False
    if port is not None and flow[2] != port:
        return False
    if dst is None:
        return True
    return ipaddress.ip_address(flow[1]) in ipaddress.ip_network(dst, strict=False)


def _outbound(src: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return src not in _INTERNET_OWN and any(src in net for net in _OUTBOUND_NETS if net.version == src.version)


_ICMP_ERRORS = {"icmp": (3, 11, 12), "icmp6": (1, 2, 3, 4)}
_GATEWAY_UPLINK = {ipaddress.ip_address(GATEWAY_UP_V4), ipaddress.ip_address(GATEWAY_UP_V6)}

Inbound = dict[tuple[str, int], list[bytes]]
"""IP payloads (transport header and data) of the packets the internet side sent, per (source address, protocol)."""


def _answers_the_internet(ip: dpkt.ip.IP | dpkt.ip6.IP6, raw: bytes, inbound: Inbound) -> bool:
    """An ICMP error the gateway's kernel sends back to an internet host about a packet that host sent (a late DNS
    answer to a closed port, the positive control): it quotes the internet's own bytes, nothing of the sandbox's.

    Provably so, or it counts (red team 2: a sandbox's crafted error quoting the proxy's upstream connection, with
    chosen bytes after the quote, read as 0 bytes when only the quoted source was looked at): the error comes from
    the gateway's uplink address (a sandbox cannot send from it: anti-spoofing), and what it quotes after the IP
    header is the start of a packet the capture saw that same internet host send."""
    icmp = ip.data
    if ipaddress.ip_address(ip.src) not in _GATEWAY_UPLINK:
        return False
    if isinstance(icmp, dpkt.icmp.ICMP) and icmp.type in _ICMP_ERRORS["icmp"]:
        quoted = raw[8:]
        if len(quoted) >= 20 and quoted[0] >> 4 == 4:
            src, proto, body = quoted[12:16], quoted[9], quoted[(quoted[0] & 0x0F) * 4 :]
            return _seen_inbound(inbound, src, proto, body)
    if isinstance(icmp, dpkt.icmp6.ICMP6) and icmp.type in _ICMP_ERRORS["icmp6"]:
        quoted = raw[8:]
        if len(quoted) >= 40 and quoted[0] >> 4 == 6:
            return _seen_inbound(inbound, quoted[8:24], quoted[6], quoted[40:])
    return False


def _seen_inbound(inbound: Inbound, src: bytes, proto: int, body: bytes) -> bool:
    address = ipaddress.ip_address(src)
    if _outbound(address):
        return False
    return any(sent.startswith(body) for sent in inbound.get((str(address), proto), ()))


def _raw_body(frame: bytes, ip: dpkt.ip.IP | dpkt.ip6.IP6) -> bytes:
    """The IP payload as it is on the wire (dpkt's parsed ICMP error keeps only the quoted packet's own length:
    bytes after it would not count)."""
    packet = frame[14:]
    if isinstance(ip, dpkt.ip.IP):
        return packet[(packet[0] & 0x0F) * 4 : ip.len]
    return packet[40 : 40 + ip.plen]


def _flow_of(ip: dpkt.ip.IP | dpkt.ip6.IP6, raw: bytes) -> tuple[Flow, bytes] | None:
    proto = ip.p if isinstance(ip, dpkt.ip.IP) else ip.nxt
    dst = str(ipaddress.ip_address(ip.dst))
    body = ip.data
    name = _PROTO.get(proto, str(proto))
    if name in ("tcp", "udp") and not isinstance(body, bytes):
        return (name, dst, int(body.dport)), bytes(body.data)
    if name in ("icmp", "icmp6") and not isinstance(body, bytes):
        if name == "icmp6" and body.type in _ND_TYPES:
            return None
        data = raw[4:]  # after type, code and checksum
        return (name, dst, 0), data[4:] if body.type in (0, 8, 128, 129) else data
    return (name, dst, 0), bytes(body)


def parse(path: pathlib.Path) -> Crossed:
    """Read a tcpdump file (Ethernet link type) into `Crossed`; a truncated last record counts as far as it goes."""
    payload: dict[Flow, bytearray] = {}
    packets: dict[Flow, int] = {}
    controls: set[str] = set()
    inbound: Inbound = {}
    with path.open("rb") as handle, contextlib.suppress(dpkt.NeedData, dpkt.UnpackError, ValueError):
        for _, frame in dpkt.pcap.Reader(handle):
            ip = dpkt.ethernet.Ethernet(frame).data
            if not isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6):
                continue
            src = ipaddress.ip_address(ip.src)
            if not _outbound(src):
                proto = ip.p if isinstance(ip, dpkt.ip.IP) else ip.nxt
                inbound.setdefault((str(src), proto), []).append(bytes(ip.data))
            if src in _INTERNET_OWN:
                body = ip.data
                if isinstance(body, dpkt.udp.UDP) and body.dport == CONTROL_PORT:
                    controls.add(bytes(body.data).decode("ascii", "replace"))
                continue
            raw = _raw_body(frame, ip)
            if not _outbound(src) or (found := _flow_of(ip, raw)) is None:
                continue
            flow, data = found
            if flow[0] in ("icmp", "icmp6") and _answers_the_internet(ip, raw, inbound):
                continue
            packets[flow] = packets.get(flow, 0) + 1
            payload.setdefault(flow, bytearray()).extend(data)
    return Crossed({flow: bytes(data) for flow, data in payload.items()}, packets, frozenset(controls))


_CONTROL = """
import socket, sys
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    sock.sendto(sys.argv[1].encode(), (sys.argv[2], int(sys.argv[3])))
"""


class Capture:
    """tcpdump in the internet namespace; `start` returns once a positive control is in the file."""

    def __init__(self, lab: Lab, path: pathlib.Path) -> None:
        self.lab = lab
        self.path = path
        self.log = path.with_suffix(".tcpdump.log")
        self.process: subprocess.Popen[bytes] | None = None
        self.result: Crossed | None = None

    def start(self) -> None:
        argv = ["ip", "netns", "exec", self.lab.internet_ns, "tcpdump", "-i", self.lab.internet_if, "-n", "-s", "0"]
        argv += ["--immediate-mode", "-U", "-Z", "root", "-w", str(self.path)]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        eventually(self._listening, timeout=scaled(20), interval=0.05)
        control = f"{CONTROL_PREFIX.decode()}{uuid.uuid4().hex}"
        argv = [sys.executable, "-c", _CONTROL, control, GATEWAY_UP_V4, str(CONTROL_PORT)]

        def seen() -> bool:
            subprocess.run(["ip", "netns", "exec", self.lab.internet_ns, *argv], check=True, timeout=scaled(15))
            assert control in self.snapshot().controls, f"positive control not captured ({self.log.read_text()})"
            return True

        eventually(seen, timeout=scaled(20), interval=0.1)

    def _listening(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"tcpdump exited {self.process.returncode}: {self.log.read_text()}")
        return "listening on" in self.log.read_text() and self.path.exists()

    def snapshot(self) -> Crossed:
        """What crossed so far (the capture keeps running)."""
        return parse(self.path) if self.path.exists() else Crossed()

    def stop(self) -> Crossed:
        """Stop tcpdump (SIGINT flushes it) and return what crossed during the whole capture."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=scaled(10))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.result = parse(self.path)
        return self.result


@contextlib.contextmanager
def capturing(lab: Lab, path: pathlib.Path) -> Iterator[Capture]:
    """A started `Capture`, stopped on exit (read ``.result`` after the block)."""
    capture = Capture(lab, path)
    try:
        capture.start()
        yield capture
    finally:
        capture.stop()


def frames_holding(path: pathlib.Path, mark: bytes) -> int:
    """Bytes of the captured frames that hold ``mark``, any frame whatever its source (a masqueraded ICMP error
    comes from the uplink's address; a forged source is not a sandbox's), which `Crossed` sets aside."""
    total = 0
    with path.open("rb") as handle:
        for _, frame in dpkt.pcap.Reader(handle):
            if mark in frame:
                total += len(frame)
    return total
