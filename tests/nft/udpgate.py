"""The gateway's UDP gate in a test namespace: the table's queue rule (`egress.nft.xtqueue`) and a real
`egress.gateway.udpgate.UdpGate` judging what it queues, for tests of the table that send allowed UDP (without the
gate nothing an allowed UDP network rule matches is forwarded: the queue has no reader, the kernel drops)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from egress.decisions import DecidedFlow
from egress.gateway.udpgate import UdpGate
from egress.nft import xtqueue
from egress.nft.render import UDP_GATE_CHAIN
from egress.policy.lists import load_name_lists
from egress.policy.model import Policy

QUEUE = 7


class Collected:
    """A reporter that keeps what the gate reports."""

    def __init__(self) -> None:
        self.decided: list[DecidedFlow] = []
        self.held: Callable[[], int] = lambda: 0
        """How many datagrams the running gate holds (set by `gate`)."""

    def report(self, attempt: DecidedFlow) -> None:
        self.decided.append(attempt)


def install(netns: str, table: str = "egress", queue: int = QUEUE) -> None:
    """The queue rule, into the table just applied (replacing the table removes it)."""
    xtqueue.install(table, UDP_GATE_CHAIN, queue, netns=netns)


@contextlib.contextmanager
def gate(netns: str, policy: Policy, table: str = "egress", queue: int = QUEUE) -> Iterator[Collected]:
    """A running gate on ``queue`` in ``netns`` (the queue rule installed in ``table``); yields what it reported."""
    collected = Collected()
    running = UdpGate(queue, policy, load_name_lists(), collected, netns=netns)
    collected.held = lambda: running.judge.held
    died: list[str] = []
    running.start(died.append)
    try:
        install(netns, table, queue)
        yield collected
    finally:
        running.stop()
    assert not died, died
