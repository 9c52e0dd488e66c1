"""The supervisor's in-process components as supervised parts: each says why it is not alive (`check`) and can be
started again (`restart`), and each stays a reload participant across restarts (``reload`` goes to the instance
running now).

- `ResolverPart`: alive when it answers a real DNS query over its UDP socket (`PROBE_NAME`, from loopback: any
  answer counts, a refusal too) within `egress.gateway.liveness.ANSWER_DEADLINE`; restarted by closing its sockets
  and serving a new `Resolver` on the same port.
- `DropLoggerPart`: alive when its thread runs and its nflog socket is open; restarted by stopping it and starting
  a new `DropLogger` on the same group.
- `UdpGatePart`: alive when its thread runs and its NFQUEUE socket is open; restarted by stopping it and starting
  a new `UdpGate` on the same queue (meanwhile the queue has no reader and the kernel drops: fail closed).
- `RecorderPart`: alive when its thread runs and its queue drains (`egress.gateway.liveness.Drain`). Restarted by
  starting a new writing thread once the old one is dead (the spool keeps one writer), which goes on with the queue
  and what the dead one held: nothing is lost. A stalled but living thread is not replaced: the restart waits up to
  `DRAIN_DEADLINE` for the queue to drain again, and a recorder that never does makes the supervisor give up, the
  lockdown in force.

`fault_hook`: test-only faults, enabled by `FAULT_HOOKS_ENV` alone (docs/gateway.md, "Fault hooks").

`ProbeFilter` keeps the resolver's probes out of the decision log and the records: they are the supervisor's,
not a sandbox's.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from egress.decisions import DecidedFlow, Reporter
from egress.dnsserver.resolver import Resolver, serve
from egress.dnsserver.udpshare import UdpShare
from egress.gateway.droplog import DropLogger
from egress.gateway.liveness import CHECK_EVERY, DRAIN_DEADLINE, Answers, Drain
from egress.gateway.recorder import RecordReporter
from egress.gateway.reload import PolicyVersion
from egress.gateway.udpgate import UdpGate
from egress.policy.model import Policy

log = logging.getLogger("egress.gateway")

PROBE_NAME: Final = "liveness.egress.invalid"
"""The name the supervisor's probe asks for (``.invalid``: never a real name, RFC 6761)."""
PROBE_WAIT: Final = 1.0
"""Seconds one probe waits; the resolver counts as hung only after `ANSWER_DEADLINE` of silence."""
FAULT_HOOKS_ENV: Final = "EGRESS_FAULT_HOOKS"
"""Test-only: names the fault SIGUSR1 injects into a running gateway (`fault_hook`); unset, SIGUSR1 is not
handled (tests/security/test_faults.py, test_faults_threads.py)."""
FAULTS: Final = ("resolver", "drop-logger", "recorder", "udp-gate")
"""What `FAULT_HOOKS_ENV` may name (``1`` is ``resolver``): the resolver stops answering; the drop logger's thread
dies; the recorder's thread dies; the UDP gate's thread dies."""
_LOOPBACK: Final = frozenset({"127.0.0.1", "::1"})


def probe_query(ident: int) -> bytes:
    """A standard query for `PROBE_NAME`, type A, class IN, with id ``ident``."""
    name = b"".join(bytes([len(label)]) + label.encode() for label in PROBE_NAME.split(".")) + b"\0"
    return struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0) + name + struct.pack(">HH", 1, 1)


def interface_address(name: str) -> str:
    """The IPv4 address of interface ``name`` (what sandboxes' DNS queries are addressed to), or ``""``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            packed = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return ""
    return socket.inet_ntoa(packed[20:24])


_SIOCGIFADDR = 0x8915


class ProbeFilter:
    """Passes every decision on except those about the supervisor's own probes."""

    def __init__(self, inner: Reporter) -> None:
        self.inner = inner

    def report(self, attempt: DecidedFlow) -> None:
        if attempt.host == PROBE_NAME and attempt.src in _LOOPBACK:
            return
        self.inner.report(attempt)


class _Reply(asyncio.DatagramProtocol):
    def __init__(self, ident: int) -> None:
        self.ident = ident
        self.answered: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if len(data) >= 2 and int.from_bytes(data[:2], "big") == self.ident and not self.answered.done():
            self.answered.set_result(None)


async def ask(port: int, wait: float = PROBE_WAIT) -> bool:
    """Whether the resolver on ``127.0.0.1:port`` answers the probe within ``wait`` seconds."""
    ident = int.from_bytes(os.urandom(2), "big")
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        lambda: _Reply(ident), remote_addr=("127.0.0.1", port), family=socket.AF_INET
    )
    try:
        transport.sendto(probe_query(ident))
        await asyncio.wait_for(protocol.answered, wait)
    except (TimeoutError, OSError):
        return False
    finally:
        transport.close()
    return True


def fault_hook(
    value: str, resolver: ResolverPart, drops: DropLoggerPart, recorder: RecorderPart, udp: UdpGatePart | None = None
) -> Callable[[], None] | None:
    """What SIGUSR1 does under ``EGRESS_FAULT_HOOKS=value`` (`FAULTS`); None when unset. Another value is a
    `ValueError`: a test that asked for a fault must not run without it."""
    if not value:
        return None
    hooks: dict[str, Callable[[], None]] = {
        "1": resolver.hang,
        "resolver": resolver.hang,
        "drop-logger": drops.die,
        "recorder": recorder.die,
    }
    if udp is not None:
        hooks["udp-gate"] = udp.die
    if value not in hooks:
        raise ValueError(f"{FAULT_HOOKS_ENV}={value!r}: not one of {', '.join(FAULTS)}")
    return hooks[value]


class ResolverPart:
    name = "resolver"

    def __init__(
        self,
        build: Callable[[], Resolver],
        port: int,
        clock: Callable[[], float] = time.monotonic,
        probe_wait: float = PROBE_WAIT,
    ) -> None:
        """``build``: a new `Resolver` under the policy in force; ``probe_wait``: how long a probe query waits for
        its answer (`PROBE_WAIT`)."""
        self.build = build
        self.port = port
        self.clock = clock
        self.probe_wait = probe_wait
        self.resolver: Resolver | None = None
        self.handles: list[object] = []
        self.answers = Answers(clock())

    async def start(self) -> None:
        self.resolver = self.build()
        self.handles = await serve(self.resolver, ["0.0.0.0", "::"], self.port)
        self.answers = Answers(self.clock())

    def reload(self, policy: Policy) -> None:
        if self.resolver is not None:
            self.resolver.reload(policy)

    async def check(self) -> str | None:
        if self.resolver is None:
            return "not running"
        if await ask(self.port, self.probe_wait):
            self.answers.answered(self.clock())
        now = self.clock()
        if self.answers.hung(now):
            return f"no answer to a probe query for {self.answers.silent_for(now):.0f} s"
        return None

    async def restart(self) -> None:
        self.close()
        await self.start()

    def close(self) -> None:
        for handle in self.handles:
            handle.close()  # type: ignore[attr-defined]
        self.handles = []

    def hang(self) -> None:
        """Test-only fault (`FAULT_HOOKS_ENV`): the resolver keeps its sockets but never answers again."""
        if self.resolver is not None:

            async def never(query: bytes, client: tuple[str, int], transport: str) -> bytes | None:
                await asyncio.Event().wait()
                return None

            setattr(self.resolver, "answer", never)  # noqa: B010 (mypy refuses assigning to a method); TCP
            for handle in self.handles:  # UDP answers in the read loop itself (`Resolver.answer_now`): stop reading
                if isinstance(handle, UdpShare):
                    handle.pause()
            log.warning("FAULT HOOK: the resolver stops answering (%s=1)", FAULT_HOOKS_ENV)


class DropLoggerPart:
    name = "drop logger"

    def __init__(self, build: Callable[[], DropLogger], on_death: Callable[[str], None]) -> None:
        self.build = build
        self.on_death = on_death
        self.drops: DropLogger | None = None

    def start(self) -> None:
        self.drops = self.build()
        self.drops.start(on_death=self.on_death)

    def reload(self, policy: Policy) -> None:
        if self.drops is not None:
            self.drops.reload(policy)

    # A reload participant (`egress.gateway.reload.Participant`) through the running logger: it names what the new
    # table logs from prepare on (egress.gateway.droplog).
    async def prepare(self, version: PolicyVersion) -> None:
        if self.drops is not None:
            await self.drops.prepare(version)

    async def commit(self, version: PolicyVersion) -> None:
        if self.drops is not None:
            await self.drops.commit(version)

    async def abort(self, version: PolicyVersion) -> None:
        if self.drops is not None:
            await self.drops.abort(version)

    async def check(self) -> str | None:
        drops = self.drops
        if drops is None:
            return "not running"
        if not drops.alive:
            return "its thread is not running"
        try:
            open_ = drops.reader is not None and drops.reader.fileno() >= 0
        except RuntimeError:  # NflogReader: "reader is not open"
            open_ = False
        if not open_:
            return "its nflog socket is closed"
        return None

    async def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.drops is not None:
            self.drops.stop()

    def die(self) -> None:
        """Test-only fault (`FAULT_HOOKS_ENV`): the drop logger's thread dies (`DropLogger.die`)."""
        if self.drops is not None:
            log.warning("FAULT HOOK: the drop logger's thread dies (%s=drop-logger)", FAULT_HOOKS_ENV)
            self.drops.die()


class UdpGatePart:
    name = "udp gate"

    def __init__(self, build: Callable[[], UdpGate], on_death: Callable[[str], None]) -> None:
        self.build = build
        self.on_death = on_death
        self.gate: UdpGate | None = None

    def start(self) -> None:
        self.gate = self.build()
        self.gate.start(on_death=self.on_death)

    def reload(self, policy: Policy) -> None:
        if self.gate is not None:
            self.gate.reload(policy)

    async def check(self) -> str | None:
        gate = self.gate
        if gate is None:
            return "not running"
        if not gate.alive:
            return "its thread is not running"
        try:
            open_ = gate.reader is not None and gate.reader.fileno() >= 0
        except RuntimeError:  # NfqueueReader: "reader is not open"
            open_ = False
        if not open_:
            return "its nfqueue socket is closed"
        return None

    async def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.gate is not None:
            self.gate.stop()

    def die(self) -> None:
        """Test-only fault (`FAULT_HOOKS_ENV`): the UDP gate's thread dies (`UdpGate.die`)."""
        if self.gate is not None:
            log.warning("FAULT HOOK: the udp gate's thread dies (%s=udp-gate)", FAULT_HOOKS_ENV)
            self.gate.die()


class RecorderPart:
    name = "recorder"

    def __init__(
        self,
        recorder: RecordReporter,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.recorder = recorder
        self.clock = clock
        self.sleep = sleep
        self.drain = Drain(clock())

    def _progress(self) -> tuple[int, int]:
        """(backlog, records done so far: written, spooled or counted lost)."""
        store = self.recorder.store
        return self.recorder.backlog, store.written + store.spooled + store.lost

    async def check(self) -> str | None:
        if not self.recorder.alive:
            return "its thread is not running"
        now = self.clock()
        self.drain.seen(now, *self._progress())
        if self.drain.stalled(now):
            return f"its queue has not drained for {now - self.drain.since:.0f} s"
        return None

    async def restart(self) -> None:
        """A dead thread: a new one (`RecordReporter.restart`). Then wait up to `DRAIN_DEADLINE` for the queue to
        drain again (a stalled thread is never doubled: one spool writer)."""
        self.recorder.restart()
        self.drain = Drain(self.clock())
        deadline = self.clock() + DRAIN_DEADLINE
        while self.clock() < deadline:
            if not self.recorder.alive:
                raise RuntimeError("the recorder's thread died again")
            self.drain.seen(self.clock(), *self._progress())
            if not self.drain.stalled(self.clock()):
                return
            await self.sleep(CHECK_EVERY)

    def die(self) -> None:
        """Test-only fault (`FAULT_HOOKS_ENV`): the recorder's thread dies (`RecordReporter.die`)."""
        log.warning("FAULT HOOK: the recorder's thread dies (%s=recorder)", FAULT_HOOKS_ENV)
        self.recorder.die()
