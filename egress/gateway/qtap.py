"""The findings tap: a `Reporter` every component (proxy workers, resolver, drop logger) puts beside its recorder,
which tells the supervisor's quarantine keeper (`egress.gateway.quarantine`) of each finding that may count.

One datagram per finding on a Unix datagram socket in the state directory, sent without blocking: the data path
never waits for the keeper. A datagram the socket cannot take now (the keeper's queue full, the keeper restarting)
is owed and sent with the next finding, so a burst is counted late rather than lost.
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass

from egress.decisions import DecidedFlow
from egress.gateway.qcount import category_of

MAX_DATAGRAM = 4096


@dataclass(frozen=True, slots=True)
class Tapped:
    """What one datagram says: ``count`` findings of ``category`` in ``sandbox``."""

    sandbox: str
    category: str
    count: int

    def encode(self) -> bytes:
        return json.dumps({"sandbox": self.sandbox, "category": self.category, "count": self.count}).encode()

    @classmethod
    def decode(cls, data: bytes) -> Tapped:
        """Raises ValueError for anything else (the socket is root's, but a bug must not stop the keeper)."""
        fields = json.loads(data)
        if not isinstance(fields, dict):
            raise ValueError("not an object")
        sandbox, category, count = fields.get("sandbox"), fields.get("category"), fields.get("count")
        if not isinstance(sandbox, str) or not isinstance(category, str) or not isinstance(count, int) or count < 1:
            raise ValueError(f"bad fields: {fields!r:.120}")
        return cls(sandbox, category, count)


class FindingTap:
    def __init__(self, path: str) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        self._lock = threading.Lock()  # the drop logger reports from its own thread
        self._owed: dict[tuple[str, str], int] = {}

    def report(self, attempt: DecidedFlow) -> None:
        category = category_of(attempt)
        if category is None:
            return
        with self._lock:
            key = (attempt.sandbox, category)
            self._owed[key] = self._owed.get(key, 0) + 1
            for (sandbox, kind), count in list(self._owed.items()):
                try:
                    self._sock.sendto(Tapped(sandbox, kind, count).encode(), self.path)
                except OSError:  # full, or no keeper now: owed until the next finding
                    return
                del self._owed[(sandbox, kind)]

    @property
    def owed(self) -> int:
        return sum(self._owed.values())

    def close(self) -> None:
        self._sock.close()
