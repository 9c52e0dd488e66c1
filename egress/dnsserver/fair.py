"""Each sandbox's share of the resolver's event loop: a budget of TCP queries per loop turn (red team 7).

The resolver answers every sandbox in one event loop. A TCP connection's handler reads a pipelined query from its
stream's buffer, answers it and writes the answer without ever yielding to the loop while the buffer holds the next
query and the write buffer has room: asyncio runs each callback ready at the start of a turn to its end, so a flood
of pipelined queries on many connections (red team 7: 148 connections of one sandbox, 600 refused queries each,
each decision logged and recorded) ran all of them in one turn of some 12 s, and no other sandbox's UDP datagram or
TCP query was read meanwhile.

`FairShare` gives each sandbox `TURN_BUDGET` TCP queries per turn of the loop, all its connections together: a
handler asks (`FairShare.take`) before it answers each query; within the budget it goes on at once, past it it
waits, first come first served among that sandbox's connections, for a turn that grants it. A turn (`FairShare.turn`,
scheduled with ``call_soon`` when a budget is first spent, so it runs once the callbacks ready now have run) gives
every sandbox its budget anew and hands it to that sandbox's waiting connections first. Between two turns the loop
polls its sockets, so the UDP readers (`egress.dnsserver.listen.UdpServer`, a budget of datagrams a wake-up each)
and every other sandbox's connections run. One sandbox's flood so costs its own latency: it gets `TURN_BUDGET`
queries a turn however many connections it opens, and another sandbox's query waits at most a turn of the others'
budgets. It is work-conserving: a sandbox alone is answered `TURN_BUDGET` queries per turn without waiting for
anything but the loop's poll. UDP is not counted here: each sandbox's datagrams have a socket, and so a kernel
queue, of their own, each read at most `egress.dnsserver.udpshare.TURN_BUDGET` per turn.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Final

TURN_BUDGET: Final = 8
"""TCP queries of one sandbox answered per turn of the loop (~1 ms of refusals, each logged and recorded)."""

Schedule = Callable[[Callable[[], None]], object]
"""How the next turn is scheduled (``loop.call_soon``; tests run turns by hand)."""


class FairShare:
    """Per-sandbox budgets of TCP queries per loop turn (see the module docstring). Single-threaded: the loop's."""

    def __init__(self, budget: int = TURN_BUDGET, schedule: Schedule | None = None) -> None:
        if budget < 1:
            raise ValueError(f"the TCP budget per turn must be at least 1 (got {budget})")
        self.budget = budget
        self._schedule = schedule
        self._spent: dict[str, int] = {}
        """Queries granted this turn, per sandbox."""
        self._waiting: dict[str, deque[asyncio.Future[None]]] = {}
        """Per sandbox, the connections waiting for a turn, the first come first."""
        self._turn_due = False
        self.turns = 0
        self.waited = 0
        """Queries that waited for a turn (their sandbox had spent its budget)."""

    def waiting(self, sandbox: str) -> int:
        return len(self._waiting.get(sandbox, ()))

    def take(self, sandbox: str) -> asyncio.Future[None] | None:
        """One query of ``sandbox`` to answer: None to answer it now (counted), or a future done when a turn grants
        it (counted then). A sandbox with connections waiting queues behind them even with budget left."""
        spent = self._spent.get(sandbox, 0)
        if spent < self.budget and sandbox not in self._waiting:
            self._spent[sandbox] = spent + 1
            self._next_turn()
            return None
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(sandbox, deque()).append(waiter)
        self.waited += 1
        self._next_turn()
        return waiter

    def turn(self) -> None:
        """A new turn: each sandbox's budget anew, handed to its waiting connections first (in their order)."""
        self._turn_due = False
        self.turns += 1
        self._spent.clear()
        for sandbox in list(self._waiting):
            waiting = self._waiting[sandbox]
            granted = 0
            while waiting and granted < self.budget:
                waiter = waiting.popleft()
                if waiter.done():  # its connection ended while it waited (the task was cancelled)
                    continue
                waiter.set_result(None)
                granted += 1
            if granted:
                self._spent[sandbox] = granted
            if not waiting:
                del self._waiting[sandbox]
        if self._waiting or self._spent:  # the rest granted, and what was granted now cleared, at the next turn
            self._next_turn()

    def _next_turn(self) -> None:
        if not self._turn_due:
            self._turn_due = True
            schedule = self._schedule or asyncio.get_running_loop().call_soon
            schedule(self.turn)
