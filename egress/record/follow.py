"""The live follow, resumable: attempt records as they reach Redis, each with a `Cursor` (the API's SSE event id)
after which a reconnect (``Last-Event-ID``) gets exactly the records that came after it, none lost, none twice.

Order: the order in which records reached Redis, by their stream entry's id (the Redis server's clock, ``ms-seq``),
then the sandbox's name, then the record's place in its entry (an entry is a batch). That order is total, and a
record is given only once its millisecond is over on the server's clock (`RedisFacade.time_ms`, read before the
sandboxes are listed) and no unread entry of a stream can sort before it (a read stops at ``FOLLOW_COUNT``
entries): Redis gives a new entry an id at or past its clock, so nothing written later can sort before a record
already given, and "every record after this cursor" is exact. A record's own ``ts`` (the flow's time) can be
older than the records given before it: a gateway's spool delivers what it kept while Redis was away once Redis
is back.

Count updates (``update_of``) are given as they are, each with its own cursor, never folded into their record:
folding ties one event to several entries, and a resume from it would count them again.
"""

from __future__ import annotations

import time
import urllib.parse
from dataclasses import dataclass

from egress.record.layout import decode_entry, stream_key
from egress.record.query import FOLLOW_COUNT, FOLLOW_SLICE, _read_streams
from egress.record.schema import AttemptRecord
from egress.record.store import RecordStore

_MAX_SEQ = 2**64 - 1
_MAX_INDEX = 2**31


@dataclass(frozen=True, slots=True, order=True)
class Cursor:
    """A record's place in the follow's order; ``str`` of it is the SSE event id (ASCII, one line)."""

    ms: int
    seq: int
    sandbox: str
    index: int

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}.{self.index}.{urllib.parse.quote(self.sandbox, safe='')}"

    @property
    def entry_id(self) -> str:
        return f"{self.ms}-{self.seq}"

    @classmethod
    def of(cls, entry_id: str, sandbox: str, index: int) -> Cursor:
        ms, _, seq = entry_id.partition("-")
        return cls(int(ms), int(seq or 0), sandbox, index)

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """The cursor an event id names; `ValueError` when it names none."""
        entry, _, rest = text.partition(".")
        index, _, sandbox = rest.partition(".")
        ms, _, seq = entry.partition("-")
        if not (ms.isdigit() and seq.isdigit() and index.isdigit() and sandbox) or not text.isascii():
            raise ValueError(f"{text[:80]!r} is not an event id of this stream")
        if int(seq) > _MAX_SEQ or len(ms) > 20 or len(index) > 9:
            raise ValueError(f"{text[:80]!r} is not an event id of this stream")
        return cls(int(ms), int(seq), urllib.parse.unquote(sandbox), int(index))


def _before(entry_id: str) -> str:
    """The greatest stream id below ``entry_id``: XREAD reads after its position, so this one's entry is read."""
    cursor = Cursor.of(entry_id, "", 0)
    if cursor.seq > 0:
        return f"{cursor.ms}-{cursor.seq - 1}"
    return f"{cursor.ms - 1}-{_MAX_SEQ}" if cursor.ms > 0 else "0-0"


class Follow:
    """One follower's place: where it is in each sandbox's stream, and the records read but not given yet (their
    millisecond is not over). Not thread-safe: one follower, one caller at a time."""

    def __init__(self, store: RecordStore, after: Cursor | None) -> None:
        """``after``: the last record the follower got (its ``Last-Event-ID``); None: from now on."""
        self.store = store
        self.after = after
        self._positions: dict[str, str] | None = None
        self._held: list[tuple[Cursor, AttemptRecord]] = []

    def _start(self) -> dict[str, str]:
        sandboxes = self.store.sandboxes()
        if self.after is not None:
            start = _before(self.after.entry_id)
            return {sandbox: start for sandbox in sandboxes}
        last = self.store.redis.last_ids([stream_key(sandbox) for sandbox in sandboxes])
        return {sandbox: entry_id or "0-0" for sandbox, entry_id in zip(sandboxes, last, strict=True)}

    def read(self, block_ms: int) -> list[tuple[Cursor, AttemptRecord]]:
        """The records now due, in order, waiting up to ``block_ms`` for some; raises `STORE_ERRORS` (the place
        is kept: the next call goes on from it)."""
        redis = self.store.redis
        if self._positions is None:
            self._positions = self._start()
        positions = self._positions
        # The clock first, then the sandboxes: a stream not listed yet gets its entries' ids from this time on.
        due_before = Cursor(redis.time_ms(), 0, "", -1)
        for sandbox in self.store.sandboxes():  # a sandbox whose stream began after the start: all of it
            positions.setdefault(sandbox, "0-0")
        wait_ms = 1 if self._held else max(min(block_ms, int(FOLLOW_SLICE * 1000)), 0)
        for sandbox, entries in _read_streams(redis, dict(positions), wait_ms):
            for entry_id, fields in entries:
                for index, record in enumerate(decode_entry(fields)):
                    cursor = Cursor.of(entry_id, sandbox, index)
                    if self.after is None or cursor > self.after:
                        self._held.append((cursor, record))
                positions[sandbox] = entry_id
            if len(entries) >= FOLLOW_COUNT:  # more of this stream is waiting: nothing after it is due yet
                due_before = min(due_before, Cursor.of(entries[-1][0], sandbox, _MAX_INDEX))
        if not self._held:
            if redis.cluster and wait_ms > 0:  # a Cluster's reads do not wait
                time.sleep(min(wait_ms / 1000, 0.1))
            return []
        due = sorted((item for item in self._held if item[0] < due_before), key=lambda item: item[0])
        self._held = [item for item in self._held if not item[0] < due_before]
        if due:
            self.after = due[-1][0]
        return due
