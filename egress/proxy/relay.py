"""What the front's relay (`egress.proxy.splice`) shows each chunk to: a `Watch`, which may close both sides
before a chunk is forwarded.

A `Watch` holds a `egress.detect.tlsshape.TlsShape` for TLS the front relays: each chunk is shown to
it before it is written on, so the chunk that completes a tunnel's shape is never forwarded. Optionally it also
hands the records that watcher reads to a `egress.detect.miningshape.MiningShape` (mining told from the shape).
Once the shape watcher is done (`Watch.finished`) nothing more of the connection is read, so the relay may move
its bytes without looking at them (splice(2)).
"""

from __future__ import annotations

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

    @property
    def finished(self) -> bool:
        """Nothing more to read: every later chunk passes unseen (the shape watcher is done), unless closed."""
        return self.shape.done and not self.closed

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
