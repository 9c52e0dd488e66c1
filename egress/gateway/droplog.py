"""The drop logger: packets nftables dropped (read from nflog) → detectors → attempts.

What the kernel drops never reaches the proxy: QUIC and other UDP, ICMP to the internet, spoofed sources, direct
connections to the gateway's own services. Each dropped packet is decoded (`egress.capture.packet`), fed to a
per-flow inspector (ICMP tunnels, VPN handshakes) and reported; the recorder aggregates floods.
"""

from __future__ import annotations

import ipaddress
import logging
import select
import threading
from collections import OrderedDict
from collections.abc import Callable

from egress.capture.nflog import LoggedPacket, NflogReader
from egress.capture.packet import ICMP, TCP, UDP, Defragmenter, Malformed, decode
from egress.decide import decide_drop, decide_unknown_source
from egress.decisions import DecidedFlow, Reporter
from egress.detect.base import Finding, FlowMeta, Transport
from egress.detect.engine import FlowInspector
from egress.detect.names import NameLists
from egress.detect.registry import build_detectors
from egress.policy.model import Policy

log = logging.getLogger("egress.droplog")

LINK_RAW = 101
MAX_FLOWS = 4096
_TRANSPORT_NAMES = {TCP: Transport.TCP, UDP: Transport.UDP, ICMP: Transport.ICMP}


def _address(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


class DropJudge:
    """Sans-IO core: one logged packet in, one attempt out (or ``None`` for what is not IP)."""

    def __init__(self, policy: Policy, lists: NameLists) -> None:
        self.policy = policy
        self.detectors = build_detectors(lists)
        self.flows: OrderedDict[tuple[int, bytes, bytes, int, int], FlowInspector] = OrderedDict()
        self.defrag = Defragmenter()

    def judge(self, packet: LoggedPacket) -> DecidedFlow | None:
        try:
            segment = decode(LINK_RAW, packet.payload, packet.ts, self.defrag)
        except (Malformed, IndexError):
            return None
        if segment is None or segment.proto not in _TRANSPORT_NAMES:
            return None
        src, dst = _address(segment.src), _address(segment.dst)
        sandbox = self.policy.sandbox_for(ipaddress.ip_address(src))
        transport = _TRANSPORT_NAMES[segment.proto]
        host = ""
        if sandbox is None or packet.prefix.startswith("egress spoof"):
            verdict = decide_unknown_source(src)
            return DecidedFlow(packet.ts, "", src, segment.sport, dst, segment.dport, transport.value, host, verdict)
        finding = self._inspect(
            segment.proto,
            segment.src,
            segment.dst,
            segment.sport,
            segment.dport,
            segment.payload,
            segment.flags,
            FlowMeta(transport, src, segment.sport, dst, segment.dport),
        )
        verdict = decide_drop(sandbox, transport.value, finding, packet.prefix)
        return DecidedFlow(
            packet.ts, sandbox.name, src, segment.sport, dst, segment.dport, transport.value, host, verdict
        )

    def _inspect(
        self, proto: int, src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, flags: int, meta: FlowMeta
    ) -> Finding | None:
        if proto == TCP:
            return None  # a dropped TCP SYN carries nothing to recognise
        key = (proto, src, dst, sport, dport)
        inspector = self.flows.get(key)
        if inspector is None:
            inspector = FlowInspector(meta, self.detectors.for_transport(meta.transport))
            self.flows[key] = inspector
            if len(self.flows) > MAX_FLOWS:
                self.flows.popitem(last=False)
        else:
            self.flows.move_to_end(key)
        if inspector.done:
            return inspector.finding
        if proto == ICMP:
            return inspector.feed_datagram(True, payload, flags)
        return inspector.feed_datagram(True, payload)


class DropLogger:
    """Runs `DropJudge` over an nflog group in a thread."""

    def __init__(self, group: int, policy: Policy, lists: NameLists, reporter: Reporter) -> None:
        self.group = group
        self.judge = DropJudge(policy, lists)
        self.reporter = reporter
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reader: NflogReader | None = None

    @property
    def policy(self) -> Policy:
        return self.judge.policy

    def reload(self, policy: Policy) -> None:
        """Judge every packet from now on under ``policy`` (sandbox names, modes); one assignment, which the
        reading thread sees whole. Per-flow inspection state is kept: it depends on the packets, not the policy."""
        self.judge.policy = policy

    def start(self, on_death: Callable[[str], None]) -> None:
        self.reader = NflogReader()
        self.reader.open(self.group)
        self._thread = threading.Thread(target=self._run, args=(on_death,), name="droplog", daemon=True)
        self._thread.start()
        log.info("drop logger reading nflog group %d", self.group)

    def _run(self, on_death: Callable[[str], None]) -> None:
        reader = self.reader
        assert reader is not None
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([reader.fileno()], [], [], 0.5)
                if not ready:
                    continue
                for packet in reader.read():
                    attempt = self.judge.judge(packet)
                    if attempt is not None:
                        self.reporter.report(attempt)
        except Exception as exc:
            log.exception("drop logger died")
            if not self._stop.is_set():
                on_death(f"drop logger died: {exc}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self.reader is not None:
            self.reader.close()


__all__ = ["DropJudge", "DropLogger"]
