"""The end of a connection the gateway let through: what the flow log of a sandbox is made of (docs/flow-log.md).

The components that forward traffic (the front's relay, mitmproxy's connections, the resolver's answered queries)
describe each such connection once, when it ends, as an `EndedFlow` (five-tuple, name, the rule and action that let
it through, bytes each way as the sandbox sent and received them, when it started and ended) and hand it to a
`FlowSink` (the recorder, which aggregates them: `egress.record.flows`). Only sandboxes whose policy says
``flow_log: true`` are described; handing one over never blocks and never changes a decision. Pure data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class EndedFlow:
    sandbox: str
    src: str
    sport: int
    dst: str
    dport: int
    transport: str
    """``tcp`` or ``udp`` (DNS)."""
    host: str
    """The name the connection was let through for (SNI, HTTP Host, the DNS question), or ``""`` (an address)."""
    rule: str
    """The rule that let it through (``sandboxes.S.allow.hosts[2]``), as the decision named it."""
    action: str
    """``allow``, ``record`` or ``would-block`` (report mode): the decision it went through under."""
    up: int
    """Bytes the sandbox sent (payload: TCP or UDP bytes, not IP headers)."""
    down: int
    """Bytes the sandbox received."""
    started: float
    """Epoch seconds."""
    ended: float
    """Epoch seconds."""


class FlowSink(Protocol):
    def flow_ended(self, flow: EndedFlow) -> None:
        """One connection let through has ended; must return at once (it is called on the relay's loop)."""


@dataclass(slots=True)
class Meter:
    """Bytes one connection's client side carried so far, counted where its socket is read and written (mutable:
    its transport adds to it)."""

    started: float
    up: int = 0
    """Bytes the sandbox sent."""
    down: int = 0
    """Bytes the sandbox was sent."""
