"""The front's relay: a pair of asyncio protocols that copy one connection's bytes both ways, with back-pressure
and half-close, optionally through a `Watch` that may close both sides before a chunk is forwarded.

A `Watch` holds a `egress.detect.tlsshape.TlsShape` for TLS the front relays: each chunk is shown to
it before it is written on, so the chunk that completes a tunnel's shape is never forwarded. Optionally it also
hands the records that watcher reads to a `egress.detect.miningshape.MiningShape` (mining told from the shape).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from egress.detect.base import Finding
from egress.detect.miningshape import MiningShape
from egress.detect.tlsshape import TlsShape

log = logging.getLogger("egress.proxy")

OnFinding = Callable[[Finding], bool]
"""Told a watcher's finding; returns True when the connection must be closed (the finding blocks)."""


class Watch:
    """A TLS shape watcher shared by both halves of one relay."""

    def __init__(
        self,
        on_finding: OnFinding,
        clock: Callable[[], float] = time.monotonic,
        mining: MiningShape | None = None,
        suspicions: bool = True,
    ) -> None:
        """``mining``: also judge the records the shape watcher reads for mining (`egress.detect.miningshape`);
        ``suspicions``: also look for the shapes ordinary TLS can take too (`TlsShape.suspicions`)."""
        self.shape = TlsShape(suspicions=suspicions)
        self.on_finding = on_finding
        self.clock = clock
        self.mining = mining
        self.judged = 0
        """Records of ``shape`` already given to ``mining``."""
        self.closed = False

    def passes(self, from_client: bool, data: bytes) -> bool:
        """Whether ``data`` may be forwarded; False closes the relay (an error here closes it too: fail closed)."""
        if self.closed:
            return False
        if self.shape.done:
            return True
        try:
            findings = [self.shape.feed(from_client, data, self.clock())]
            if self.mining is not None:
                findings += [self.mining.add(record) for record in self.shape.records[self.judged :]]
                self.judged = len(self.shape.records)
        except Exception:  # an inspection error blocks: the relay closes, never forwards unwatched
            log.exception("relay: TLS shape watcher failed: connection closed")
            self.closed = True
            return False
        for finding in findings:
            if finding is not None and not self.closed and self.on_finding(finding):
                self.closed = True
        return not self.closed


class Half(asyncio.Protocol):
    """One side of a relay: what it receives goes to the other side; back-pressure and half-close follow."""

    def __init__(self, watch: Watch | None = None, from_client: bool = True) -> None:
        self.watch = watch
        self.from_client = from_client
        self.transport: asyncio.Transport | None = None
        self.other: Half | None = None
        self.ended = False
        """This side sent EOF."""
        self.on_lost: Callable[[], None] | None = None
        """Called once this side's connection is gone (the front forgets the relay: `egress.proxy.openflows`)."""
        self.received = 0
        """Bytes this side received (what its peer sent; the flow log's bytes each way)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.other is not None and self.other.transport is not None
        self.received += len(data)
        if self.watch is not None and not self.watch.passes(self.from_client, data):
            self.close_both()
            return
        self.other.transport.write(data)

    def eof_received(self) -> bool:
        self.ended = True
        assert self.other is not None and self.other.transport is not None
        if self.other.ended:
            self.close_both()
        elif self.other.transport.can_write_eof():
            self.other.transport.write_eof()
        return True  # the other direction may still carry data

    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.close_both()
        if self.on_lost is not None:
            self.on_lost()

    def close_both(self) -> None:
        for side in (self, self.other):
            if side is not None and side.transport is not None and not side.transport.is_closing():
                side.transport.close()


class Upstream(Half):
    """The destination's side: reads nothing until the client's side is attached (`Front` resumes it)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()
