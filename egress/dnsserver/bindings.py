"""Which addresses the gateway resolver answered for which names, per sandbox: the proof a proxy needs that a
destination address really belongs to the SNI or Host a sandbox names (no spoofing, fronting or direct IPs).

One writer (the resolver) and several readers (the proxy workers, separate processes) share it through a SQLite
file in WAL mode: a reader's lookup is one indexed query, and a crashed process loses nothing the others need.
Entries expire with the DNS TTL (never below `MIN_TTL`, so a client that resolves and connects at once is not
raced by a zero TTL). The writer remembers what it wrote and skips a write that would move an expiry by less than
`REFRESH` seconds: a name answered from the resolver's cache again and again costs no write each time.

A reader keeps what it looked up (`names_for`: every connection the proxy decides asks twice) for as long as
nothing was committed to the file since and none of the names has expired: SQLite's WAL-index header (the first
bytes of the ``-shm`` file every connection maps, https://www.sqlite.org/walformat.html) changes with every commit
of any process, and is read without a lock or a syscall. A header that is mid-update, a file not in WAL mode, or
an ``-shm`` file that cannot be mapped keep nothing: every lookup is a query, as before. The kept answer can be no
staler than the handle's own connection, which maps the same file.
"""

from __future__ import annotations

import math
import mmap
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
KEPT_MAX: Final = 4096
"""Lookups a handle keeps at most (all forgotten at once past this)."""
_HEADER: Final = 48
"""Bytes of one copy of the WAL-index header; the ``-shm`` file starts with two copies, equal when not mid-update."""

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
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._wal = mode is not None and str(mode[0]).lower() == "wal"
        self._shm: mmap.mmap | None = None
        self._kept: dict[tuple[str, str], tuple[bytes, float, float, frozenset[str]]] = {}
        """(sandbox, address) → (WAL-index header, looked up at, first expiry, names): `names_for`'s answers."""
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
        version = self._version()  # before the query: a commit after it makes the answer kept here stale at once
        key = (sandbox, address)
        if version is not None:
            kept = self._kept.get(key)
            if kept is not None and kept[0] == version and kept[1] <= moment < kept[2]:
                return kept[3]
        rows = self._db.execute(
            "SELECT name, expires FROM binding WHERE sandbox = ? AND address = ? AND expires > ?",
            (sandbox, address, moment),
        ).fetchall()
        names = frozenset(row[0] for row in rows)
        if version is not None:
            if len(self._kept) >= KEPT_MAX:
                self._kept.clear()
            self._kept[key] = (version, moment, min((float(row[1]) for row in rows), default=math.inf), names)
        elif self._wal and self._shm is None:
            self._map()  # after a query: the -shm file exists now
        return names

    def _version(self) -> bytes | None:
        """The WAL-index header now, or None when it cannot be trusted (not mapped, or mid-update)."""
        shm = self._shm
        if shm is None:
            return None
        header = shm[: 2 * _HEADER]
        first = header[:_HEADER]
        return first if first == header[_HEADER:] and first[12] else None  # both copies alike, and isInit

    def _map(self) -> None:
        """Map the ``-shm`` file (read-only), or leave it unmapped for good: nothing is kept then."""
        self._wal = False  # one try
        try:
            with open(self.path + "-shm", "rb") as file:
                self._shm = mmap.mmap(file.fileno(), 2 * _HEADER, prot=mmap.PROT_READ)
        except (OSError, ValueError):
            self._shm = None

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
        self._kept.clear()
        if self._shm is not None:
            self._shm.close()
            self._shm = None
        self._db.close()
