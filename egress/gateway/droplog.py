"""The drop logger: packets nftables dropped (read from nflog) → detectors → attempts.

What the kernel drops never reaches the proxy: QUIC and other UDP, ICMP to the internet, every other IP protocol
(GRE, IPIP, SCTP, ESP...), spoofed sources, direct connections to the gateway's own services. Each dropped packet
is decoded (`egress.capture.packet`, any IP protocol), fed to a per-flow inspector (ICMP tunnels, VPN handshakes)
or, for protocols other than TCP/UDP/ICMP, named and judged by `egress.detect.ipproto` (GRE, IPIP, ESP... are
tunnels), and reported; the recorder aggregates floods. The log is rate-limited per (source, protocol,
destination), so once a second the logger also reads the kernel's drop counters and reports what the log left out
(`egress.gateway.dropcount`): a flood costs the flooder its own records' detail, never another attempt's record.

A record says what the kernel did: the log prefix's kind (``report``: let through; any other: dropped) sets the
action, whatever the policy the logger holds says, so a reload that switches a sandbox's mode cannot make the two
disagree. The logger takes part in reloads (`egress.gateway.reload`): prepared, the new policy names the sandbox
of packets the new table logged before the commit reached the logger; committed, it is the logger's policy, and
the old one still names what the old table logged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import math
import select
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from egress.capture.nflog import LoggedPacket, NflogReader
from egress.capture.packet import ICMP, ICMP6, TCP, UDP, Defragmenter, Malformed, Segment, decode
from egress.decide import Enforcement, Verdict, decide_connection_limit, decide_drop, decide_unknown_source
from egress.decisions import DecidedFlow, Reporter
from egress.detect import ipproto
from egress.detect.base import Finding, FlowMeta, Transport
from egress.detect.engine import FlowInspector
from egress.detect.names import NameLists
from egress.detect.registry import build_detectors
from egress.gateway.dropcount import CountKey, DropCounts
from egress.gateway.dropread import CountReader, Reading
from egress.gateway.reload import PolicyVersion
from egress.gateway.spoofname import InterfaceName, no_names, sandbox_behind
from egress.nft import runner
from egress.nft.names import (
    COUNTED_KINDS,
    PASSED_KINDS,
    LogKind,
    parse_prefix,
    set_id,
    uncounted,
)
from egress.policy.model import Policy, Sandbox

log = logging.getLogger("egress.droplog")

LINK_RAW = 101
MAX_FLOWS = 4096
COUNT_EVERY = 1.0
"""Seconds between two reads of the kernel's drop counters."""
LOG_DELAY = 0.05
"""Seconds, at most, between the kernel counting a packet and its log reaching the socket (the log rule follows the
count rule in the same pass, and the reader asks the kernel to flush each message at once, 10 ms at the most)."""
FINAL_READS = 2
"""Reads at the logger's stop: one per generation of counters (`egress.nft.names.COUNT_GENERATIONS`)."""
_TRANSPORT_NAMES = {TCP: Transport.TCP, UDP: Transport.UDP, ICMP: Transport.ICMP}
Counters = Callable[[], Reading]
"""Reads what the kernel counted since the previous call (`CountReader.read` on the gateway's table)."""


def _address(raw: bytes) -> str:
    return str(ipaddress.ip_address(raw))


def as_the_kernel_did(verdict: Verdict, passed: bool) -> Verdict:
    """``verdict`` with the action the kernel took: would-block for a packet it let through, else block."""
    action = Enforcement.WOULD_BLOCK if passed else Enforcement.BLOCK
    return verdict if verdict.action is action else dataclasses.replace(verdict, action=action)


class DropJudge:
    """Sans-IO core: one logged packet in, one attempt out (or ``None`` for what is not IP)."""

    def __init__(
        self, policy: Policy, lists: NameLists, sandbox_if: str = "", name_of: InterfaceName = no_names
    ) -> None:
        self.policy = policy
        self.sandbox_if = sandbox_if
        """The gateway's ``--sandbox-if``: a spoofed source arriving there is named after its one sandbox."""
        self.name_of = name_of
        self.previous: Policy | None = None
        """The policy before the last reload: it names what the old table logged, read after the commit."""
        self.pending: Policy | None = None
        """A reload's policy, prepared: it names what the new table logs before the commit reaches the logger."""
        self.detectors = build_detectors(lists)
        self.flows: OrderedDict[tuple[int, bytes, bytes, int, int], FlowInspector] = OrderedDict()
        self.defrag = Defragmenter()
        self.counts = DropCounts()

    def judge(self, packet: LoggedPacket) -> DecidedFlow | None:
        try:
            segment = decode(LINK_RAW, packet.payload, packet.ts, self.defrag, any_protocol=True)
        except (Malformed, IndexError):
            return None
        if segment is None:
            return None
        src, dst = _address(segment.src), _address(segment.dst)
        parsed = parse_prefix(packet.prefix)
        sandbox = self._sandbox(src, parsed[1] if parsed is not None else None)
        passed = parsed is not None and parsed[0] in PASSED_KINDS
        transport = _TRANSPORT_NAMES.get(segment.proto, Transport.IP)
        protocol = "" if transport is not Transport.IP else ipproto.protocol_name(segment.proto)
        sport, dport = segment.sport, segment.dport
        if sandbox is None or packet.prefix.startswith("egress spoof"):
            verdict = decide_unknown_source(src)
            behind = sandbox_behind(self.policy, self.sandbox_if, packet.indev, self.name_of)
            return DecidedFlow(packet.ts, behind, src, sport, dst, dport, transport.value, "", verdict, protocol)
        if transport is Transport.IP:
            finding = ipproto.inspect(segment.proto, segment.payload)
            detail = f"{ipproto.describe(segment.proto, segment.payload)}; {packet.prefix}"
            verdict = decide_drop(sandbox, protocol, finding, detail)
        else:
            meta = FlowMeta(transport, src, sport, dst, dport)
            finding = self._inspect(segment, meta)
            verdict = decide_drop(sandbox, transport.value, finding, packet.prefix)
        verdict = as_the_kernel_did(verdict, passed)
        if parsed is not None and parsed[0] is LogKind.QUARANTINE:  # the sandbox's cut-off decided, not its rules
            verdict = dataclasses.replace(verdict, rule=f"sandboxes.{sandbox.name}.quarantine")
        if parsed is not None and parsed[0] is LogKind.LIMIT and verdict.finding is None:  # its bound decided
            verdict = decide_connection_limit(sandbox, transport.value, packet.prefix)
        decided = DecidedFlow(packet.ts, sandbox.name, src, sport, dst, dport, transport.value, "", verdict, protocol)
        if parsed is not None and parsed[0] in COUNTED_KINDS and not uncounted(packet.prefix):
            # a packet the kernel could not count is in no reading: its log is its one record, not a counted one's
            self.counts.judged((*count_key(segment), passed), decided, time.monotonic())
        return decided

    def reload(self, policy: Policy) -> None:
        """Judge under ``policy`` from now on (one assignment each, which the reading thread sees whole)."""
        self.previous = self.policy
        self.policy = policy
        self.pending = None

    def _sandbox(self, source: str, named: str | None) -> Sandbox | None:
        """The sandbox of ``source`` as the table that logged the packet named it (``named``: the prefix's
        `set_id`): the policy in force, else the one being committed, else the one before; by source alone when
        none of them has that name."""
        address = ipaddress.ip_address(source)
        current = self.policy.sandbox_for(address)
        if named is None or (current is not None and set_id(current.name) == named):
            return current
        for policy in (self.pending, self.previous):
            other = policy.sandbox_for(address) if policy is not None else None
            if other is not None and set_id(other.name) == named:
                return other
        return current

    def unlogged(
        self,
        counters: Mapping[CountKey, int],
        read_at: float | None = None,
        logged_through: float = math.inf,
        counted_by: float | None = None,
    ) -> list[DecidedFlow]:
        """Decisions for the packets the kernel counted but did not log (see `egress.gateway.dropcount`):
        ``counters``, what was counted since the previous reading (all of it by ``counted_by``, default
        ``read_at``), read at ``read_at`` (monotonic; default now), every log of a packet counted by
        ``logged_through`` judged (default: all of them)."""
        now = time.monotonic() if read_at is None else read_at
        return self.counts.reconcile(
            counters, now, self._synthesize, time.time(), self._restate, logged_through, counted_by
        )

    def settle_all(self) -> list[DecidedFlow]:
        """What the last read counted and nothing reported yet (the logger stops)."""
        return self.counts.settle_all(self._synthesize, time.time(), self._restate)

    def _synthesize(self, key: CountKey) -> DecidedFlow | None:
        """The decision for a key none of whose packets was logged: what the key alone says."""
        src, proto, dst, passed = key
        sandbox = self.policy.sandbox_for(ipaddress.ip_address(src))
        if sandbox is None:
            return None  # the anti-spoofing rule logs those; they are not counted per key
        transport = _TRANSPORT_NAMES.get(ICMP if proto == ICMP6 else proto, Transport.IP)
        protocol = "" if transport is not Transport.IP else ipproto.protocol_name(proto)
        finding = ipproto.inspect(proto, b"") if transport is Transport.IP else None
        verdict = as_the_kernel_did(decide_drop(sandbox, protocol or transport.value, finding, "none logged"), passed)
        return DecidedFlow(time.time(), sandbox.name, src, 0, dst, 0, transport.value, "", verdict, protocol)

    def _restate(self, key: CountKey, template: DecidedFlow) -> DecidedFlow:
        """A key's template under the policy in force: its sandbox's name now (a reload may have renamed it), and
        the action of the set that counted the packets."""
        sandbox = self.policy.sandbox_for(ipaddress.ip_address(template.src))
        name = sandbox.name if sandbox is not None else template.sandbox
        verdict = as_the_kernel_did(template.verdict, key[3])
        if name == template.sandbox and verdict is template.verdict:
            return template
        return dataclasses.replace(template, sandbox=name, verdict=verdict)

    def _inspect(self, segment: Segment, meta: FlowMeta) -> Finding | None:
        proto = segment.proto
        if proto == TCP:
            return None  # a dropped TCP SYN carries nothing to recognise
        key = (proto, segment.src, segment.dst, segment.sport, segment.dport)
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
            return inspector.feed_datagram(True, segment.payload, segment.flags)
        return inspector.feed_datagram(True, segment.payload)


def count_key(segment: Segment) -> runner.DropKey:
    """The key the kernel counts ``segment`` under: (source, IP protocol as the kernel sees it, destination)."""
    proto = ICMP6 if segment.proto == ICMP and len(segment.src) == 16 else segment.proto
    return _address(segment.src), proto, _address(segment.dst)


class DropLogger:
    """Runs `DropJudge` over an nflog group in a thread."""

    def __init__(
        self,
        group: int,
        policy: Policy,
        lists: NameLists,
        reporter: Reporter,
        table: str | None = None,
        netns: str | None = None,
        counters: Counters | None = None,
        sandbox_if: str = "",
        name_of: InterfaceName = no_names,
    ) -> None:
        """``table``: the gateway's nftables table, whose drop counters are read every `COUNT_EVERY` seconds
        (``counters`` replaces that read; with neither, what the log leaves out is not counted). ``netns``: read
        nflog and the counters inside that named namespace (tests, the lab)."""
        self.group = group
        self.netns = netns
        if counters is None and table is not None:
            counters = CountReader(table, netns).read
        self.counters = counters
        self._count_failing = False
        self._logged_through = -math.inf
        """Every log of a packet the kernel counted by then has been judged (monotonic): the socket was drained."""
        self.judge = DropJudge(policy, lists, sandbox_if, name_of)
        self.reporter = reporter
        self._stop = threading.Event()
        self._stopped = False
        self._fault = threading.Event()
        self._thread: threading.Thread | None = None
        self.reader: NflogReader | None = None

    @property
    def policy(self) -> Policy:
        return self.judge.policy

    def reload(self, policy: Policy) -> None:
        """Judge every packet from now on under ``policy`` (sandbox names); per-flow inspection state is kept: it
        depends on the packets, not the policy."""
        self.judge.reload(policy)

    # The reload protocol (`egress.gateway.reload.Participant`): the table commits first, so the new policy is
    # known here from prepare on, for what the new table logs before this component's commit.
    name = "drop logger"

    async def prepare(self, version: PolicyVersion) -> None:
        self.judge.pending = version.policy

    async def commit(self, version: PolicyVersion) -> None:
        self.judge.reload(version.policy)

    async def abort(self, version: PolicyVersion) -> None:
        self.judge.pending = None

    def start(self, on_death: Callable[[str], None]) -> None:
        self.reader = NflogReader(self.netns)
        self.reader.open(self.group)
        self._thread = threading.Thread(target=self._run, args=(on_death,), name="droplog", daemon=True)
        self._thread.start()
        log.info("drop logger reading nflog group %d", self.group)

    def _run(self, on_death: Callable[[str], None]) -> None:
        reader = self.reader
        assert reader is not None
        count_at = time.monotonic() + COUNT_EVERY
        poller = select.poll()  # not select(): the supervisor's descriptors may be numbered past FD_SETSIZE
        poller.register(reader.fileno(), select.POLLIN)
        try:
            while not self._stop.is_set():
                if self._fault.is_set():
                    raise RuntimeError("fault hook: the drop logger's thread dies (EGRESS_FAULT_HOOKS=drop-logger)")
                wait_ms = max(0.0, min(0.5, count_at - time.monotonic())) * 1000
                if poller.poll(wait_ms):
                    self._drain(reader)
                if self.counters is not None and time.monotonic() >= count_at:
                    count_at = time.monotonic() + COUNT_EVERY
                    self._count(reader)
        except Exception as exc:
            log.exception("drop logger died")
            if not self._stop.is_set():
                on_death(f"drop logger died: {exc}")

    @property
    def alive(self) -> bool:
        """Whether the reading thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def die(self) -> None:
        """Test-only fault (``EGRESS_FAULT_HOOKS=drop-logger``, then SIGUSR1 to the gateway): the reading thread
        raises at its next turn (within half a second), as a bug in it would, and reports its death."""
        self._fault.set()

    def _drain(self, reader: NflogReader, timeout: float = 0.0) -> None:
        """Judge every log waiting; the socket was empty at the end, so every log of a packet counted
        `LOG_DELAY` before the call has been judged."""
        started = time.monotonic()
        self._judge(reader.read(timeout=timeout))
        self._logged_through = started - LOG_DELAY

    def _judge(self, packets: list[LoggedPacket]) -> None:
        for packet in packets:
            attempt = self.judge.judge(packet)
            if attempt is not None:
                self.reporter.report(attempt)

    def _count(self, reader: NflogReader) -> None:
        """Read what the kernel counted since the last read, then judge what was logged up to then, then report what
        was counted, not logged."""
        assert self.counters is not None
        try:
            reading = self.counters()
            read_at = time.monotonic()
        except (runner.NftError, OSError) as exc:  # locked down, the table being replaced, nft slow: next second
            if not self._count_failing:
                log.warning("drop counters not read (retrying every %.0f s): %s", COUNT_EVERY, exc)
            self._count_failing = True
            return
        self._count_failing = False
        self._drain(reader, timeout=0.02)
        for attempt in self.judge.unlogged(reading.counts, read_at, self._logged_through, reading.counted_by):
            self.reporter.report(attempt)

    def stop(self) -> None:
        """Stop reading; report what was logged by now and everything the kernel counted and no read reported yet:
        the last reads take both generations of counters (the lockdown the supervisor applies first keeps them and
        counts nothing more), so a logger that stops, or died and is replaced, leaves no count unread. What a log
        still on its way then carries is judged too, or lost with the socket."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self.reader is not None:
            if self._thread is None or not self._thread.is_alive():  # the thread owns the judge while it runs
                with contextlib.suppress(OSError):
                    self._judge(self.reader.read(timeout=0.02))
                self._last_reads()
                for attempt in self.judge.settle_all():
                    self.reporter.report(attempt)
            self.reader.close()

    def _last_reads(self) -> None:
        """Read both generations of counters (`FINAL_READS` reads): what they hold is added to the keys' counts,
        settled by `DropJudge.settle_all` against what the log brought."""
        if self.counters is None:
            return
        for _ in range(FINAL_READS):
            try:
                reading = self.counters()
            except (runner.NftError, OSError) as exc:  # no table (never applied, or deleted): nothing more to read
                log.warning("drop counters not read at the logger's stop: %s", exc)
                return
            for attempt in self.judge.unlogged(reading.counts, logged_through=math.inf):
                self.reporter.report(attempt)


__all__ = ["DropJudge", "DropLogger"]
