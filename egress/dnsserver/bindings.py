"""Which addresses the gateway resolver answered for which names, per sandbox: the proof a proxy needs that a
destination address really belongs to the SNI or Host a sandbox names (no spoofing, fronting or direct IPs).

One writer (the resolver) and several readers (the proxy workers, separate processes) share it through a SQLite
file in WAL mode: a reader's lookup is one indexed query, and a crashed process loses nothing the others need.
Entries expire with the DNS TTL (never below `MIN_TTL`, so a client that resolves and connects at once is not
raced by a zero TTL).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final

MIN_TTL: Final = 30
MAX_TTL: Final = 24 * 3600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS binding (
    sandbox TEXT NOT NULL,
    address TEXT NOT NULL,
    name TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (sandbox, address, name)
) WITHOUT ROWID;
"""


class Bindings:
    """A handle on the bindings file. Each process opens its own."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def bind(self, sandbox: str, name: str, answers: Iterable[tuple[str, int]], now: float | None = None) -> None:
        """Record that ``name`` resolved to each ``(address, ttl)`` for ``sandbox``."""
        moment = time.time() if now is None else now
        rows = [(sandbox, address, name, moment + min(max(ttl, MIN_TTL), MAX_TTL)) for address, ttl in answers]
        if not rows:
            return
        self._db.executemany(
            "INSERT INTO binding VALUES (?, ?, ?, ?) "
            "ON CONFLICT(sandbox, address, name) DO UPDATE SET expires = max(expires, excluded.expires)",
            rows,
        )

    def names_for(self, sandbox: str, address: str, now: float | None = None) -> frozenset[str]:
        """Names the resolver answered with ``address`` for ``sandbox`` and that have not expired."""
        moment = time.time() if now is None else now
        rows = self._db.execute(
            "SELECT name FROM binding WHERE sandbox = ? AND address = ? AND expires > ?", (sandbox, address, moment)
        ).fetchall()
        return frozenset(row[0] for row in rows)

    def is_bound(self, sandbox: str, name: str, address: str, now: float | None = None) -> bool:
        return name in self.names_for(sandbox, address, now)

    def purge(self, now: float | None = None) -> int:
        """Delete expired bindings; returns how many."""
        moment = time.time() if now is None else now
        return self._db.execute("DELETE FROM binding WHERE expires <= ?", (moment,)).rowcount

    def clear(self) -> None:
        self._db.execute("DELETE FROM binding")

    def close(self) -> None:
        self._db.close()
