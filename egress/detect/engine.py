"""Per-flow inspection state: feeds a flow's bytes to its detectors until one finds something, every one has
answered ``None``, or the buffer cap is reached.

Owns the bounded buffers of a flow and the early decision. Stream and datagram flows are inspected through a
`FlowInspector`: the capture scanner's TCP, UDP and ICMP flows, the proxy's inspected relays and decrypted or
WebSocket payloads (`egress.proxy.gate.Gate.inspector` and ``inspect_once``), and the drop logger's dropped
datagrams. Two paths do not use it: DNS messages go to the registry's DNS observer (``DnsInspector``) in the
scanner and the DNS server, and the gate calls the name detector directly on a ClientHello or request head it
already holds whole.
"""

from __future__ import annotations

from egress.detect.base import MORE, Detector, Finding, FlowMeta, FlowView

STREAM_CAP = 16 * 1024
"""Bytes kept per direction. Every signature we match sits in the first few kB of a flow (handshakes, logins,
the first JSON-RPC calls); once either direction reaches it, each undecided detector gets one last look with
``complete`` set and the flow is decided (clean unless that look finds something)."""

DATAGRAM_CAP = 24
"""Datagrams kept for a UDP or ICMP flow, both directions together; the datagram that reaches it is the last one
inspected (with ``complete`` set)."""


class FlowInspector:
    """Inspection state of one flow. ``done`` turns true once the flow is decided, with or without a finding."""

    __slots__ = ("view", "pending", "finding", "done", "stream_cap", "datagram_cap")

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
        self.done = not self.pending
        self.stream_cap = stream_cap
        self.datagram_cap = datagram_cap

    def feed_stream(self, from_client: bool, data: bytes) -> Finding | None:
        """Add in-order stream bytes of one direction and re-run the undecided detectors."""
        if self.done or not data:
            return self.finding
        view = self.view
        if from_client:
            room = self.stream_cap - len(view.client)
            view.client += data[:room]
        else:
            room = self.stream_cap - len(view.server)
            view.server += data[:room]
        if len(view.client) >= self.stream_cap or len(view.server) >= self.stream_cap:
            view.complete = True
        return self._run()

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
                self.finding = result
                self.pending = []
                self.done = True
                return result
        self.pending = [] if view.complete else still
        self.done = not self.pending
        return None
