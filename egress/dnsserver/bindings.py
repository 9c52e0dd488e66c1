"""Which addresses the gateway resolver answered for which names, per sandbox: the proof a proxy needs that a
destination address really belongs to the SNI or Host a sandbox names (no spoofing, fronting or direct IPs).

One writer (the resolver) and several readers (the proxy workers, separate processes) share it through a SQLite
file in WAL mode: a reader's lookup is one indexed query, and a crashed process loses nothing the others need.
Entries expire with the DNS TTL (never below `MIN_TTL`, so a client that resolves and connects at once is not
raced by a zero TTL). The writer remembers what it wrote and skips a write that would move an expiry by less than
`REFRESH` seconds: a name answered from the resolver's cache again and again costs no write each time.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final

MIN_TTL: Final = 30
MAX_TTL: Final = 24 * 3600
REFRESH: Final = 1.0
"""Seconds an expiry must move forward before the writer writes it again."""
WRITTEN_MAX: Final = 100_000
"""Expiries the writer remembers at most."""

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
        self._written: dict[tuple[str, str, str], float] = {}
        """(sandbox, address, name) → the expiry this handle last wrote (only the writer's handle fills it)."""

    def bind(self, sandbox: str, name: str, answers: Iterable[tuple[str, int]], now: float | None = None) -> None:
        """Record that ``name`` resolved to each ``(address, ttl)`` for ``sandbox``."""
        moment = time.time() if now is None else now
        rows = [(sandbox, address, name, moment + min(max(ttl, MIN_TTL), MAX_TTL)) for address, ttl in answers]
        written = self._written
        rows = [row for row in rows if written.get(row[:3], -1.0) + REFRESH <= row[3]]
        if not rows:
            return
        self._db.executemany(
            "INSERT INTO binding VALUES (?, ?, ?, ?) "
            "ON CONFLICT(sandbox, address, name) DO UPDATE SET expires = max(expires, excluded.expires)",
            rows,
        )
        for row in rows:
            written[row[:3]] = row[3]
        if len(written) > WRITTEN_MAX:  # forget the oldest half: at worst a write is not skipped
            for key in list(written)[: len(written) // 2]:
                del written[key]

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
        self._written = {key: expires for key, expires in self._written.items() if expires > moment}
        return self._db.execute("DELETE FROM binding WHERE expires <= ?", (moment,)).rowcount

    def clear(self) -> None:
        self._written.clear()
        self._db.execute("DELETE FROM binding")

    def close(self) -> None:
        self._db.close()
