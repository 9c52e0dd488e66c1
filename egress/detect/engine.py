"""Per-flow inspection state: feeds a flow's bytes to its detectors until one finds mining, every one has
answered, or the buffer cap is reached; the flow keeps its highest-ranked finding (`RANK`), and a flow the cap
stopped before anything could rule it out is *unidentified* (`FlowInspector.unidentified`), never clean.

Owns the bounded buffers of a flow and the early decision. Stream and datagram flows are inspected through a
`FlowInspector`: the capture scanner's TCP, UDP and ICMP flows, the proxy's inspected relays and decrypted or
WebSocket payloads (`egress.proxy.gate.Gate.inspector` and ``inspect_once``), and the drop logger's dropped
datagrams. Two paths do not use it: DNS messages go to the registry's DNS observer (``DnsInspector``) in the
scanner and the DNS server, and the gate calls the name detector directly on a ClientHello or request head it
already holds whole.
"""

from __future__ import annotations

from typing import Final

from egress.detect import identity
from egress.detect.base import MORE, Category, Detector, Finding, FlowMeta, FlowView, evidence

STREAM_CAP = 16 * 1024
"""Bytes kept per direction. Every signature we match sits in the first few kB of a flow (handshakes, logins,
the first JSON-RPC calls); once either direction reaches it, each undecided detector gets one last look with
``complete`` set and the flow is decided. A flow that some detector still could not rule out at that point, and
that is not shown to be TLS, HTTP or SSH (`egress.detect.identity`), is *unidentified*, not clean: padding, junk or
benign calls up to the cap must not buy a miner an uninspected connection (issue 9)."""

DATAGRAM_CAP = 24
"""Datagrams kept for a UDP or ICMP flow, both directions together; the datagram that reaches it is the last one
inspected (with ``complete`` set)."""

RANK: Final = {Category.MINING: 3, Category.TUNNEL: 2, Category.CRYPTO_NODE: 1}
"""Which finding a flow keeps when several are made: mining evidence wins whenever it appears (a crypto-node
allowing policy must not let a miner through because its node call came first), then tunnels. Only a mining
finding ends the inspection at once; after another one the undecided detectors keep looking."""

UNIDENTIFIED: Final = "unidentified"
"""The protocol label of `unidentified_finding`."""


def unidentified_finding(inspector: FlowInspector) -> Finding:
    """A tunnel finding for an unidentified flow, for an enforcement point whose policy expects a protocol (a
    network rule's ``expect``): what the record shows. The engine never reports it by itself, since most ports
    carry protocols the detectors do not name (databases, message queues) and only the policy knows which."""
    view = inspector.view
    side = view.client or view.server
    text = f"{len(view.client)}+{len(view.server)} bytes, no protocol shown; first bytes {side[:24].hex()}"
    return Finding(Category.TUNNEL, UNIDENTIFIED, "engine", evidence(text))


class FlowInspector:
    """Inspection state of one flow. ``done`` turns true once the flow is decided, with or without a finding."""

    __slots__ = (
        "view", "pending", "finding", "done", "stream_cap", "datagram_cap", "identity", "unidentified", "outranked"
    )  # fmt: skip

    def __init__(
        self,
        meta: FlowMeta,
        detectors: tuple[Detector, ...],
        stream_cap: int = STREAM_CAP,
        datagram_cap: int = DATAGRAM_CAP,
    ) -> None:
        self.view = FlowView(meta)
        self.pending: list[Detector] = list(detectors)
        self.finding: Finding | None = None
        """The highest-ranked finding so far (`RANK`); it may still be replaced while ``done`` is false."""
        self.outranked: dict[Category, Finding] = {}
        """The first finding of each other category that a higher-ranked one replaced (`findings`)."""
        self.done = not self.pending
        self.stream_cap = stream_cap
        self.datagram_cap = datagram_cap
        self.identity: str | None = None
        """What the stream was shown to be when the cap stopped its inspection (`egress.detect.identity`)."""
        self.unidentified = False
        """The cap stopped the inspection of a stream that some detector could not rule out, that is no protocol
        `identity` names, and that has no mining or tunnel finding: the flow is not clean, only not judged."""

    @property
    def findings(self) -> tuple[Finding, ...]:
        """Every category's first finding, the kept one (`finding`) first: what a scanner reports of a flow that
        showed more than one thing (a refused ``Upgrade`` followed by Stratum is a tunnel and mining). An
        enforcement point decides on `finding` alone."""
        if self.finding is None:
            return ()
        others = (found for category, found in self.outranked.items() if category is not self.finding.category)
        return (self.finding, *others)

    def feed_stream(self, from_client: bool, data: bytes) -> Finding | None:
        """Add in-order stream bytes of one direction and re-run the undecided detectors; the finding so far."""
        if self.done or not data:
            return self.finding
        view = self.view
        if from_client:
            room = self.stream_cap - len(view.client)
            view.client += data[:room]
        else:
            room = self.stream_cap - len(view.server)
            view.server += data[:room]
        if len(view.client) < self.stream_cap and len(view.server) < self.stream_cap:
            return self._run()
        self._run()
        if self.pending:  # the cap: judge what is left, then give each detector its last look
            found = self.finding
            self.identity = identity.identify(view)
            self.unidentified = self.identity is None and (found is None or found.category is Category.CRYPTO_NODE)
            view.complete = True
            self._run()
            final = self.finding
            if final is not None and final.category is not Category.CRYPTO_NODE:
                self.unidentified = False
        return self.finding

    def feed_datagram(self, from_client: bool, payload: bytes, icmp_type: int | None = None) -> Finding | None:
        """Add one UDP or ICMP payload and re-run the undecided detectors."""
        if self.done:
            return self.finding
        view = self.view
        if icmp_type is not None:
            view.icmp_types.append(icmp_type)
        bucket = view.client_datagrams if from_client else view.server_datagrams
        bucket.append(payload)
        if len(view.client_datagrams) + len(view.server_datagrams) >= self.datagram_cap:
            view.complete = True
        return self._run()

    def close(self) -> Finding | None:
        """The flow ended: give each undecided detector a last look with ``complete`` set."""
        if not self.done:
            view = self.view
            view.complete = True
            if view.client or view.server or view.client_datagrams or view.server_datagrams:
                self._run()
            else:  # nothing was ever said: there is nothing to recognise
                self.pending = []
                self.done = True
        return self.finding

    def _run(self) -> Finding | None:
        view = self.view
        still: list[Detector] = []
        for detect in self.pending:
            result = detect(view)
            if result is MORE:
                still.append(detect)
            elif isinstance(result, Finding):
                if self.finding is None or RANK[result.category] > RANK[self.finding.category]:
                    if self.finding is not None:
                        self.outranked.setdefault(self.finding.category, self.finding)
                    self.finding = result
                elif result.category is not self.finding.category:
                    self.outranked.setdefault(result.category, result)
                if result.category is Category.MINING:
                    self.pending = []
                    self.done = True
                    return result
        self.pending = [] if view.complete else still
        self.done = not self.pending
        return self.finding
