"""How many TCP connections the resolver holds, per sandbox and in all (red team 5's lead).

The resolver runs in the supervisor, next to the drop logger and the record spool: a sandbox holding its
``max_connections`` (1,024 by default) TCP connections to the resolver's port would use up the supervisor's
descriptors, and then what records blocked attempts (the nflog socket, the spool, Redis) and the answers to the
other sandboxes fail with it. `TcpBound` keeps at most ``per_sandbox`` connections of one sandbox (a source in no
sandbox counts under ``""``) and ``limit`` in all, in the spirit of `egress.proxy.idle`: a new connection over its
sandbox's share closes that sandbox's connection idle the longest (waiting for its client's next bytes); over the
limit, the one idle the longest of the sandbox that holds the most (one sandbox's flood never closes another's
while it holds more). With none of them idle, the new connection is closed instead, unless the sandbox that holds
the most is another, holding more than the newcomer's will: then its oldest connection goes, busy or not. A
connection is busy while the resolver answers it, and an agent keeps it so for good by never reading its answers
(the handler waits in ``drain``): red team 7 (tests/security/test_redteam_dnstcp_busy.py) filled the bound in
all with busy connections, and every new connection of another sandbox was closed in their place (a handler waits
in ``drain`` 10 s at most now: `egress.dnsserver.tcpserve`). Closing fails closed:
the client is not answered, nothing is resolved. Each close is reported (`on_closed`), which the resolver turns
into a record (reason ``idle-limit``, rule `RULE`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

TCP_LIMIT: Final = 2048
"""TCP connections the resolver holds in all (one descriptor each; the supervisor raises its limit well past it,
and `serve` takes a quarter of a lower limit instead)."""
TCP_PER_SANDBOX: Final = 128
"""TCP connections of one sandbox the resolver holds (a client resolving over TCP needs a few)."""
RULE: Final = "dns-tcp-limit"
"""The rule of the records of connections the bound closed."""


@dataclass(eq=False, slots=True)
class Conn:
    """One connection: ``close`` ends it."""

    sandbox: str
    client: tuple[str, int]
    close: Callable[[], object]


Closed = Callable[[Conn, int], None]
"""Told each connection the bound closed, with how many of its sandbox's it has closed in all."""


class TcpBound:
    """The resolver's bound (see the module docstring). Single-threaded: the event loop's."""

    def __init__(
        self, limit: int = TCP_LIMIT, per_sandbox: int = TCP_PER_SANDBOX, on_closed: Closed | None = None
    ) -> None:
        if limit < 1 or per_sandbox < 1:
            raise ValueError(f"TCP bounds must be at least 1 (limit {limit}, per sandbox {per_sandbox})")
        self.limit = limit
        self.per_sandbox = min(per_sandbox, limit)
        self.on_closed = on_closed
        self.total = 0
        self.closed: dict[str, int] = {}
        """Connections closed by the bound, per sandbox."""
        self._held: dict[str, dict[Conn, None]] = {}
        self._idle: dict[str, OrderedDict[Conn, None]] = {}
        """Per sandbox, the connections waiting for their client, the one idle the longest first."""

    def held_by(self, sandbox: str) -> int:
        return len(self._held.get(sandbox, ()))

    def open(self, conn: Conn) -> bool:
        """Count a new connection (idle: it waits for its first query), closing first what the bound says;
        ``False`` when it was closed itself (nothing idle to close in its place)."""
        mine = self.held_by(conn.sandbox)
        if mine >= self.per_sandbox:
            victim = conn.sandbox
        elif self.total >= self.limit:
            victim = max(self._held, key=lambda name: len(self._held[name]))
        else:
            victim = None
        busy_too = victim is not None and victim != conn.sandbox and self.held_by(victim) > mine + 1
        if victim is not None and not self._close_oldest(victim, busy_too):
            self._closed(conn)
            return False
        self._held.setdefault(conn.sandbox, {})[conn] = None
        self._idle.setdefault(conn.sandbox, OrderedDict())[conn] = None
        self.total += 1
        return True

    def busy(self, conn: Conn) -> None:
        """``conn`` is being answered: not closed by the bound until it waits again."""
        idle = self._idle.get(conn.sandbox)
        if idle is not None:
            idle.pop(conn, None)

    def idle(self, conn: Conn) -> None:
        """``conn`` waits for its client again (the newest idle)."""
        if conn in self._held.get(conn.sandbox, ()):
            self._idle.setdefault(conn.sandbox, OrderedDict())[conn] = None

    def release(self, conn: Conn) -> None:
        """``conn`` ended (whoever closed it); idempotent."""
        held = self._held.get(conn.sandbox)
        if held is None or conn not in held:
            return
        del held[conn]
        self.total -= 1
        self.busy(conn)
        if not held:
            del self._held[conn.sandbox]
            self._idle.pop(conn.sandbox, None)

    def _close_oldest(self, sandbox: str, busy_too: bool = False) -> bool:
        """Close ``sandbox``'s connection idle the longest; with none idle, its oldest when ``busy_too``."""
        idle = self._idle.get(sandbox)
        if idle:
            conn = next(iter(idle))
        elif busy_too and self._held.get(sandbox):
            conn = next(iter(self._held[sandbox]))
        else:
            return False
        self.release(conn)
        self._closed(conn)
        return True

    def _closed(self, conn: Conn) -> None:
        count = self.closed[conn.sandbox] = self.closed.get(conn.sandbox, 0) + 1
        conn.close()
        if self.on_closed is not None:
            self.on_closed(conn, count)
