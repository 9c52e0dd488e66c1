"""The UDP gate: datagrams to a sandbox's allowed UDP networks, queued by the ruleset (``queue num N``, no
``bypass``), judged before they are forwarded, and recorded when refused.

`UdpJudge` is the sans-IO core: one queued packet in, a `Judged` out (accept or not, the decision to record, the
flow to count). Per flow (sandbox source and port, destination and port) it keeps the latest datagrams from the
sandbox (`egress.detect.datagrams.WINDOW`) and runs `egress.detect.datagrams.inspect` on them at each datagram:
WireGuard, OpenVPN, IKE, encapsulations; DTLS and QUIC unless the rule expects them; pool vocabulary (Stratum,
XMRig's login, getwork...) over the datagrams joined. A flow once refused stays refused: its later datagrams are
dropped without a look, and counted in its record (each refusal is reported with its count of dropped datagrams
every `REPORT_EVERY` datagrams, so a flood costs the recorder little). A datagram that matches no UDP rule of its
sandbox under the policy in force (queued under the previous table, or from no sandbox) is dropped and recorded.
A report-mode sandbox's refusals are let through and recorded as ``would-block``. A datagram with bytes before
its UDP header (IPv4 options, IPv6 extension headers: `unread_headers`) refuses its flow: the gate reads the UDP
payload only.

A datagram that leaves a text message open (`egress.detect.textframe`: the first pieces of a JSON-RPC line or an
HTTP request cut over datagrams) gets no verdict yet: the flow holds it, and every later datagram of the flow,
until the joined message is whole (then the held ones are accepted in order, before the one that closed it) or
refused by the inspection (then they are dropped with it). A hold past `HOLD_SECONDS`, over `HOLD_DATAGRAMS` or
`HOLD_BYTES` for the flow or `HOLD_TOTAL` for the gate, or broken by a datagram that is not text, is dropped and
the flow refused and recorded (``firewall-drop``, the evidence saying which): the first pieces of a pool message
never reach the pool. Binary encodings hold the same way while the window may still become a pool message
(`egress.detect.binframe`: XMRig's call word as a binary string, a pool name cut at the window's end); such a
hold ends when nothing is open any more (accepted), when the inspection names the message, or at the bounds
(refused).

`UdpGate` runs it over an NFQUEUE queue (`egress.capture.nfqueue`) in a thread, supervised like the drop logger
(`egress.gateway.components.UdpGatePart`): its death locks the gateway down. Fail closed everywhere: an exception
judging a packet drops that packet; a dead gate leaves the queue without a reader, so the kernel drops; a full
queue drops. Allowed flows are handed to the flow log (`egress.flowlog.EndedFlow`) once idle for `FLOW_IDLE`
seconds, or when the gate stops.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import select
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from egress.capture.nfqueue import NF_ACCEPT, NF_DROP, NfqueueReader, QueuedPacket
from egress.capture.packet import UDP, Defragmenter, Malformed, decode
from egress.decide import Enforcement, Verdict, decide_drop, decide_unknown_source
from egress.decisions import DecidedFlow, Reporter
from egress.detect import binframe, datagrams
from egress.detect.base import Finding, FlowMeta, Transport
from egress.detect.names import NameLists
from egress.detect.registry import build_detectors
from egress.detect.textframe import Frame, frame
from egress.flowlog import EndedFlow, FlowSink
from egress.policy.model import Expect, Mode, Policy

log = logging.getLogger("egress.udpgate")

LINK_RAW: Final = 101
MAX_FLOWS: Final = 16384
"""Flows remembered (least recently seen forgotten first: a forgotten refused flow is judged afresh)."""
REPORT_EVERY: Final = 1000
"""A refused flow's later drops are reported in one decision per this many datagrams (and at the flow's end)."""
FLOW_IDLE: Final = 60.0
"""Seconds without a datagram after which an allowed flow is handed to the flow log."""
HOLD_SECONDS: Final = 2.0
"""How long a flow's datagrams wait for the text message they open to be whole (`egress.detect.textframe`)."""
HOLD_DATAGRAMS: Final = datagrams.WINDOW
"""Datagrams one flow may hold (the inspection window: a message cut in more could not be read whole)."""
HOLD_BYTES: Final = datagrams.WINDOW_BYTES
"""Payload bytes one flow may hold (the window's joined bytes, likewise)."""
HOLD_TOTAL: Final = 1024
"""Datagrams held by all flows at once (a quarter of the kernel queue, `egress.capture.nfqueue.MAX_LENGTH`)."""


def unread_headers(packet: bytes) -> str | None:
    """What the IP packet carries before its UDP header besides the fixed IP header (IPv4 options, IPv6 extension
    headers), or None. The gate reads the UDP payload only, so such bytes would be forwarded unread: red team 12
    put Stratum's subscribe in a Destination Options header (options a receiver skips) of datagrams to an allowed
    network. The kernel reassembles fragments before the queue, so a queued packet holds no fragment header."""
    if packet[0] >> 4 == 4:
        return f"IPv4 options ({(packet[0] & 0x0F) * 4 - 20} bytes)" if packet[0] & 0x0F != 5 else None
    return f"IPv6 extension header {packet[6]}" if packet[6] != 17 else None


CONTEXT_BYTES: Final = 600
"""Bytes before a flow's latest datagram that `binframe.pending` reads while nothing is held: a call word begun in
earlier datagrams, its length prefix and the bytes that tell binary context (Cap'n Proto's pointer may lie 512
bytes before the string). A word whole in an earlier datagram held the flow then, so only one spanning into the
latest can be new."""


def _latest(window: deque[bytes]) -> bytes:
    """The window's latest datagram whole, and up to `CONTEXT_BYTES` before it."""
    size = len(window[-1]) + CONTEXT_BYTES
    parts: list[bytes] = []
    for datagram in reversed(window):
        parts.append(datagram)
        size -= len(datagram)
        if size <= 0:
            break
    return b"".join(reversed(parts))[-(len(window[-1]) + CONTEXT_BYTES) :]


FlowKey = tuple[str, int, str, int]
"""(source, source port, destination, destination port)."""


@dataclass(slots=True)
class Flow:
    sandbox: str
    rule: str
    quic: bool
    dtls: bool
    window: deque[bytes] = field(default_factory=lambda: deque(maxlen=datagrams.WINDOW))
    refused: DecidedFlow | None = None
    unreported: int = 0
    """Datagrams dropped on a refused flow since its last report."""
    action: str = "allow"
    held: list[tuple[int, int]] = field(default_factory=list)
    """Packet ids (and payload sizes) whose verdict waits for the message they open to be whole (or ruled out)."""
    pending: bytes = b""
    """Their payloads joined."""
    binary: str | None = None
    """Why the window may still become a binary pool message (`egress.detect.binframe`), when that holds it."""
    hold_until: float = 0.0
    datagrams: int = 0
    up: int = 0
    started: float = 0.0
    last: float = 0.0


@dataclass(frozen=True, slots=True)
class Judged:
    accept: bool
    decided: DecidedFlow | None = None
    """What to record (a refusal, a datagram from no allowed rule), or None."""
    held: bool = False
    """The packet's verdict waits (a later `Judged.then` or `UdpJudge.due` gives it)."""
    then: tuple[tuple[int, bool], ...] = ()
    """Verdicts (packet id, accept) on earlier held packets, to give before this packet's own, in this order."""


@dataclass(slots=True)
class Due:
    """What `UdpJudge.due` settles: verdicts on held packets, and what to record."""

    verdicts: list[tuple[int, bool]] = field(default_factory=list)
    decided: list[DecidedFlow] = field(default_factory=list)


class UdpJudge:
    """Sans-IO: queued packets in, verdicts and decisions out. Not thread-safe: one reader thread owns it."""

    def __init__(self, policy: Policy, lists: NameLists, flows: FlowSink | None = None) -> None:
        self.policy = policy
        self.udp = build_detectors(lists).udp_gate
        self.flows: OrderedDict[FlowKey, Flow] = OrderedDict()
        self.sink = flows
        self.accepted = 0
        self.dropped = 0
        self.holding: dict[FlowKey, Flow] = {}
        """Flows holding datagrams, oldest hold first."""
        self.held = 0
        """Datagrams held by all flows."""
        self._orphans: list[int] = []
        """Held packets whose flow was forgotten (a reload, `MAX_FLOWS`): dropped at the next `due`."""

    def reload(self, policy: Policy) -> list[DecidedFlow]:
        """Judge under ``policy`` from now on. Allowed flows end (to the flow log; their rule is looked up again at
        their next datagram); refused flows stay refused. Returns what the ended flows owe to record."""
        self.policy = policy
        owed = []
        for key, flow in list(self.flows.items()):
            if flow.refused is None:
                del self.flows[key]
                decided = self._ended(key, flow)
                if decided is not None:
                    owed.append(decided)
        return owed

    def judge(self, packet: QueuedPacket, now: float | None = None) -> Judged:
        """The verdict for one queued packet (or that it is held); an exception in the inspection is the caller's
        to turn into a drop. ``now``: the clock `due` is called with (the packet's time stamp if None: the kernel's
        stamp, when it gives one, need not be on that clock), which a hold's deadline is taken from."""
        judged = self._judge(packet, packet.ts if now is None else now)
        for _packet_id, accept in judged.then:
            self._count(accept)
        if not judged.held:
            self._count(judged.accept)
        return judged

    def _count(self, accept: bool) -> None:
        if accept:
            self.accepted += 1
        else:
            self.dropped += 1

    def _judge(self, packet: QueuedPacket, clock: float) -> Judged:
        try:
            segment = decode(LINK_RAW, packet.payload, packet.ts, Defragmenter(), any_protocol=True)
        except (Malformed, IndexError):
            segment = None
        if segment is None or segment.proto != UDP:
            return Judged(False)  # the ruleset queues only UDP; anything else is dropped without a word
        src, dst = str(ipaddress.ip_address(segment.src)), str(ipaddress.ip_address(segment.dst))
        key = (src, segment.sport, dst, segment.dport)
        now = clock  # one clock for holds, idleness and the records: the gate's (the kernel's stamp may be on another)
        flow = self.flows.get(key)
        if flow is None:
            made = self._new_flow(src, dst, segment.dport, now)
            if isinstance(made, DecidedFlow):
                return Judged(False, dataclasses.replace(made, sport=segment.sport))
            flow = made
            self.flows[key] = flow
            if len(self.flows) > MAX_FLOWS:
                self._ended(*self.flows.popitem(last=False))
        else:
            self.flows.move_to_end(key)
        flow.last = now
        if flow.refused is not None:
            flow.unreported += 1
            if flow.unreported >= REPORT_EVERY:
                return Judged(flow.action != "block", self._report_refused(flow))
            return Judged(flow.action != "block")
        if (unread := unread_headers(packet.payload)) is not None:
            return self._refuse(key, flow, None, f"{unread} before the datagram, which the gate does not read", now)
        flow.window.append(segment.payload)
        meta = FlowMeta(Transport.UDP, src, segment.sport, dst, segment.dport)
        finding = datagrams.inspect(meta, flow.window, self.udp, quic=flow.quic, dtls=flow.dtls)
        if finding is None:
            return self._passed(key, flow, packet.packet_id, segment.payload, now, clock)
        return self._refuse(key, flow, finding, None, now)

    def _passed(self, key: FlowKey, flow: Flow, packet_id: int, payload: bytes, now: float, clock: float) -> Judged:
        """A datagram the inspection let pass: accepted, or held while it leaves a message open (a text message not
        yet whole, or a window that may still become a binary pool message), and the held ones accepted with it
        once nothing is open."""
        binary = binframe.pending(datagrams.joined(flow.window) if flow.held else _latest(flow.window))
        if not flow.held and binary is None and frame(payload) is not Frame.OPEN:
            flow.datagrams += 1
            flow.up += len(payload)
            return Judged(True)
        text = flow.pending + payload
        framed = frame(text)
        why = None
        if binary is None:
            if framed is Frame.WHOLE or (framed is Frame.BINARY and flow.binary):
                then = tuple((held, True) for held, _size in flow.held)
                flow.datagrams += len(then) + 1
                flow.up += len(text)
                self._release(key, flow)
                return Judged(True, then=then)
            if framed is Frame.BINARY:
                why = "a text message it opened was broken off by a datagram that is not text"
        if why is None and (len(flow.held) >= HOLD_DATAGRAMS or len(text) > HOLD_BYTES):
            why = f"a message it opened outgrew the hold ({HOLD_DATAGRAMS} datagrams, {HOLD_BYTES} bytes)"
        elif why is None and self.held >= HOLD_TOTAL:
            why = f"a message it opened found the gate's hold full ({HOLD_TOTAL} datagrams, all flows)"
        if why is not None:
            return self._refuse(key, flow, None, why if binary is None else f"{why} ({binary})", now)
        if not flow.held:
            flow.hold_until = clock + HOLD_SECONDS
            self.holding[key] = flow
        flow.held.append((packet_id, len(payload)))
        flow.pending = text
        flow.binary = binary
        self.held += 1
        return Judged(False, held=True)

    def _refuse(self, key: FlowKey, flow: Flow, finding: Finding | None, why: str | None, now: float) -> Judged:
        """Refuse the flow (a finding, or ``why`` a held message was given up); its held datagrams go with it."""
        src, sport, dst, dport = key
        held = len(flow.held)
        then_ids = self._release(key, flow)
        sandbox = self.policy.sandbox_for(ipaddress.ip_address(src))
        if sandbox is None:  # the policy was reloaded between the flow's datagrams
            return Judged(False, then=tuple((held_id, False) for held_id in then_ids))
        detail = f"udp gate {flow.rule}" if why is None else f"udp gate {flow.rule}: {why}; {held} held dropped"
        verdict = decide_drop(sandbox, "udp", finding, detail)
        passed = sandbox.mode is Mode.REPORT
        if passed:
            verdict = dataclasses.replace(verdict, action=Enforcement.WOULD_BLOCK)
        decided = DecidedFlow(now, sandbox.name, src, sport, dst, dport, "udp", "", verdict)
        flow.refused = decided
        flow.action = "would-block" if passed else "block"
        return Judged(passed, decided, then=tuple((held_id, passed) for held_id in then_ids))

    def _release(self, key: FlowKey, flow: Flow) -> list[int]:
        """Forget ``flow``'s hold; the ids it held, in order (their verdicts are the caller's)."""
        ids = [packet_id for packet_id, _size in flow.held]
        if ids:
            self.held -= len(ids)
            self.holding.pop(key, None)
            flow.held.clear()
            flow.pending = b""
            flow.binary = None
        return ids

    def due(self, now: float) -> Due:
        """Holds past `HOLD_SECONDS`: their datagrams dropped, their flows refused and recorded; and held packets
        of forgotten flows, dropped."""
        due = Due([(packet_id, False) for packet_id in self._orphans])
        self._orphans.clear()
        for key, flow in list(self.holding.items()):
            if now < flow.hold_until:
                continue
            what = "a text message it opened" if flow.binary is None else f"what it held ({flow.binary})"
            why = f"{what} was not whole within {HOLD_SECONDS:g} s"
            judged = self._refuse(key, flow, None, why, now)
            due.verdicts.extend(judged.then)
            if judged.decided is not None:
                due.decided.append(judged.decided)
        for _packet_id, accept in due.verdicts:
            self._count(accept)
        return due

    def _new_flow(self, src: str, dst: str, dport: int, now: float) -> Flow | DecidedFlow:
        sandbox = self.policy.sandbox_for(ipaddress.ip_address(src))
        if sandbox is None:
            verdict = decide_unknown_source(src)
            return DecidedFlow(now, "", src, 0, dst, dport, "udp", "", verdict)
        rule = sandbox.network_rule(ipaddress.ip_address(dst), dport, "udp")
        if rule is None:  # queued by a table the policy in force no longer matches
            verdict = decide_drop(sandbox, "udp", None, "udp gate: no udp network rule of the policy in force")
            return DecidedFlow(now, sandbox.name, src, 0, dst, dport, "udp", "", verdict)
        quic, dtls = rule.expects(Expect.QUIC), rule.expects(Expect.DTLS)
        return Flow(sandbox.name, rule.rule_id, quic, dtls, started=now, last=now)

    def _report_refused(self, flow: Flow) -> DecidedFlow | None:
        if flow.refused is None or not flow.unreported:
            return None
        count, flow.unreported = flow.unreported, 0
        evidence = f"{flow.refused.verdict.evidence} ({count} later datagrams of the refused flow)"
        verdict: Verdict = dataclasses.replace(flow.refused.verdict, evidence=evidence)
        return dataclasses.replace(flow.refused, ts=flow.last, verdict=verdict, count=count)

    def idle(self, now: float) -> list[DecidedFlow]:
        """Hand the flows idle for `FLOW_IDLE` seconds to the flow log; what their refusals still owe, to record."""
        owed = []
        while self.flows:
            key, flow = next(iter(self.flows.items()))
            if now - flow.last < FLOW_IDLE:
                break
            del self.flows[key]
            decided = self._ended(key, flow)
            if decided is not None:
                owed.append(decided)
        return owed

    def close(self) -> list[DecidedFlow]:
        """Every flow ends (the gate stops)."""
        owed = [d for key, flow in list(self.flows.items()) if (d := self._ended(key, flow)) is not None]
        self.flows.clear()
        return owed

    def _ended(self, key: FlowKey, flow: Flow) -> DecidedFlow | None:
        self._orphans.extend(self._release(key, flow))  # a forgotten flow's held packets: dropped at the next `due`
        if flow.refused is not None:
            return self._report_refused(flow)
        if self.sink is not None and flow.datagrams:
            src, sport, dst, dport = key
            ended = EndedFlow(
                flow.sandbox,
                src,
                sport,
                dst,
                dport,
                "udp",
                "",
                flow.rule,
                flow.action,
                flow.up,
                0,
                flow.started,
                flow.last,
            )
            with contextlib.suppress(Exception):  # the flow log never stands in the way (docs/flow-log.md)
                self.sink.flow_ended(ended)
        return None


class UdpGate:
    """Runs `UdpJudge` over an NFQUEUE queue in a thread."""

    name = "udp gate"

    def __init__(
        self,
        queue: int,
        policy: Policy,
        lists: NameLists,
        reporter: Reporter,
        flows: FlowSink | None = None,
        netns: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue = queue
        self.netns = netns
        self.judge = UdpJudge(policy, lists, flows)
        self.reporter = reporter
        self.clock = clock
        self.failures = 0
        """Packets dropped because judging them raised."""
        self._stop = threading.Event()
        self._fault = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending: Policy | None = None
        self._lock = threading.Lock()
        self.reader: NfqueueReader | None = None

    def reload(self, policy: Policy) -> None:
        """Judge under ``policy`` from the reading thread's next turn on."""
        with self._lock:
            self._pending = policy

    def start(self, on_death: Callable[[str], None]) -> None:
        self.reader = NfqueueReader(self.netns)
        self.reader.open(self.queue)
        self._thread = threading.Thread(target=self._run, args=(on_death,), name="udpgate", daemon=True)
        self._thread.start()
        log.info("udp gate reading nfqueue %d", self.queue)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def die(self) -> None:
        """Test-only fault (``EGRESS_FAULT_HOOKS=udp-gate``): the reading thread raises at its next turn."""
        self._fault.set()

    def _run(self, on_death: Callable[[str], None]) -> None:
        reader = self.reader
        assert reader is not None
        poller = select.poll()
        poller.register(reader.fileno(), select.POLLIN)
        idle_at = self.clock() + 1.0
        try:
            while not self._stop.is_set():
                if self._fault.is_set():
                    raise RuntimeError("fault hook: the udp gate's thread dies (EGRESS_FAULT_HOOKS=udp-gate)")
                with self._lock:
                    pending, self._pending = self._pending, None
                if pending is not None:
                    for decided in self.judge.reload(pending):
                        self.reporter.report(decided)
                if poller.poll(200):
                    for packet in reader.read():
                        self._verdict(reader, packet)
                self._settle(reader, self.judge.due(self.clock()))
                if self.clock() >= idle_at:
                    idle_at = self.clock() + 1.0
                    for decided in self.judge.idle(self.clock()):
                        self.reporter.report(decided)
        except Exception as exc:
            log.exception("udp gate died")
            if not self._stop.is_set():
                on_death(f"udp gate died: {exc}")

    def _verdict(self, reader: NfqueueReader, packet: QueuedPacket) -> None:
        try:
            judged = self.judge.judge(packet, self.clock())
        except Exception:  # fail closed: a bug in the inspection drops the datagram, never forwards it
            self.failures += 1
            log.exception("udp gate: judging a datagram failed; dropped")
            reader.verdict(packet.packet_id, NF_DROP)
            return
        for packet_id, accept in judged.then:  # held ones first, in order: the kernel sends in verdict order
            reader.verdict(packet_id, NF_ACCEPT if accept else NF_DROP)
        if not judged.held:
            reader.verdict(packet.packet_id, NF_ACCEPT if judged.accept else NF_DROP)
        if judged.decided is not None:
            self.reporter.report(judged.decided)

    def _settle(self, reader: NfqueueReader, due: Due) -> None:
        for packet_id, accept in due.verdicts:
            reader.verdict(packet_id, NF_ACCEPT if accept else NF_DROP)
        for decided in due.decided:
            self.reporter.report(decided)

    def stop(self) -> None:
        """Stop reading; close the queue (the kernel drops what still waits); report what refused flows owe and
        hand the allowed ones to the flow log."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self.reader is not None:
            self.reader.close()
        if self._thread is None or not self._thread.is_alive():
            for decided in self.judge.close():
                self.reporter.report(decided)


__all__ = [
    "FLOW_IDLE",
    "HOLD_BYTES",
    "HOLD_DATAGRAMS",
    "HOLD_SECONDS",
    "HOLD_TOTAL",
    "REPORT_EVERY",
    "Due",
    "Judged",
    "UdpGate",
    "UdpJudge",
    "unread_headers",
]
