"""How many connections that have not sent a byte yet one proxy worker holds, per sandbox and in all.

A connection is idle from its accept until its client's first byte: while the front waits for it
(`egress.proxy.front`, ``PEEK_WAIT``), then in mitmproxy (a server-first protocol's client, or a client that never
speaks; `egress.proxy.mitm.server` tells this bound when it speaks, and ends the hold when mitmproxy is done).
Red team 2 held 24,000 such connections open to an allowed name: each cost a worker a hand-off to mitmproxy, an
eager upstream dial and two descriptors, and the workers' loops, busy for tens of seconds, stopped answering the
supervisor (lockdown, restart, and mining attempts made meanwhile left no record).

`IdleBound` keeps at most ``per_sandbox`` idle connections of one sandbox and ``limit`` in all: a new idle
connection over its sandbox's share closes that sandbox's oldest idle one; over the worker's limit, the oldest of
the sandbox that holds the most (one sandbox's flood never closes another's connections while it holds more).
Closing fails closed: nothing was read from the connection, nothing is forwarded. Each close is counted per
sandbox and reported (`on_closed`), which the front turns into rate-limited records (reason ``idle-limit``).
A connection that speaks leaves the bound at once and is judged as always.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

IDLE_LIMIT: Final = 4096
"""Idle connections one worker holds in all (each costs up to two descriptors: the client's and, in mitmproxy,
its eager upstream dial)."""
IDLE_PER_SANDBOX: Final = 1024
"""Idle connections of one sandbox one worker holds."""
IDLE_TIMEOUT: Final = 300.0
"""Seconds a connection inside mitmproxy may go without progress (`egress.proxy.mitm.quiet`; Squid closes an idle
client connection after 2 minutes and a request whose head has not arrived after 5; long polls and idle WebSockets
under 5 minutes stay). Here, not in the module that uses it, so that the settings and the command line read it
without importing mitmproxy (every `egress` command imports them)."""


@dataclass(eq=False, slots=True)
class Held:
    """One idle connection: ``close`` ends it (set by whoever has it now: the front's task, then mitmproxy's
    transport)."""

    sandbox: str
    source: tuple[str, int]
    dst: tuple[str, int]
    close: Callable[[], object]
    active: bool = field(default=True)
    """Still counted (not yet spoken, closed or ended)."""


Closed = Callable[[Held, int], None]
"""Told each connection the bound closed, with how many of its sandbox's it has closed in all."""


class IdleBound:
    """The bound of one worker (see the module docstring)."""

    def __init__(
        self, limit: int = IDLE_LIMIT, per_sandbox: int = IDLE_PER_SANDBOX, on_closed: Closed | None = None
    ) -> None:
        if limit < 1 or per_sandbox < 1:
            raise ValueError(f"idle bounds must be at least 1 (limit {limit}, per sandbox {per_sandbox})")
        self.limit = limit
        self.per_sandbox = min(per_sandbox, limit)
        self.on_closed = on_closed
        self.total = 0
        self.closed: dict[str, int] = {}
        """Connections closed by the bound, per sandbox."""
        self._held: dict[str, OrderedDict[int, Held]] = {}
        self._by_fd: dict[int, Held] = {}

    def hold(self, fd: int, held: Held) -> None:
        """Count ``held`` (the connection on descriptor ``fd``) as idle, first closing what the bound says."""
        if not held.active:
            raise ValueError("a released hold is not held again")
        if self.held_by(held.sandbox) >= self.per_sandbox:
            self._close_oldest(held.sandbox)
        elif self.total >= self.limit:
            largest = max(self._held, key=lambda name: len(self._held[name]))
            self._close_oldest(largest)
        self._held.setdefault(held.sandbox, OrderedDict())[fd] = held
        self._by_fd[fd] = held
        self.total += 1

    def held(self, fd: int) -> Held | None:
        """The idle connection on ``fd``, if it is counted."""
        return self._by_fd.get(fd)

    def release(self, fd: int, held: Held) -> None:
        """``held`` spoke, or ended: it no longer counts (nothing when it was released already)."""
        if not held.active:
            return
        held.active = False
        self.total -= 1
        if self._by_fd.get(fd) is held:
            del self._by_fd[fd]
        mine = self._held.get(held.sandbox)
        if mine is not None:
            mine.pop(fd, None)
            if not mine:
                del self._held[held.sandbox]

    def held_by(self, sandbox: str) -> int:
        return len(self._held.get(sandbox, ()))

    def _close_oldest(self, sandbox: str) -> None:
        mine = self._held[sandbox]
        fd, oldest = next(iter(mine.items()))
        self.release(fd, oldest)
        count = self.closed.get(sandbox, 0) + 1
        self.closed[sandbox] = count
        oldest.close()
        if self.on_closed is not None:
            self.on_closed(oldest, count)
