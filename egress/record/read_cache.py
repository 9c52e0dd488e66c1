"""Decoded stream entries kept in memory for the readers that ask for the same recent entries again and again (the
API's attempt list and timelines, every few seconds from every dashboard): an entry never changes once stored
(retention deletes it whole, and a count update is an entry of its own), so its records can be kept by (server,
stream, entry id) and neither fetched nor decoded again. Bounded by the records it holds; least recently used out.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Final

from egress.record.schema import AttemptRecord

MAX_RECORDS: Final = 32_768
"""Records kept at most (about 1 KiB each in memory): the newest entries of a few dozen sandboxes."""

Key = tuple[str, str, str]
"""(server URL, stream key, entry id)."""


class EntryCache:
    """A thread-safe LRU of decoded entries."""

    def __init__(self, max_records: int = MAX_RECORDS) -> None:
        self.max_records = max_records
        self._entries: OrderedDict[Key, list[AttemptRecord]] = OrderedDict()
        self._records = 0
        self._lock = threading.Lock()

    def get(self, key: Key) -> list[AttemptRecord] | None:
        with self._lock:
            records = self._entries.get(key)
            if records is not None:
                self._entries.move_to_end(key)
            return records

    def get_many(self, keys: list[Key]) -> list[list[AttemptRecord] | None]:
        """`get` of each key, under one lock (a walk asks for a chunk of entries at a time)."""
        entries = self._entries
        with self._lock:
            found = [entries.get(key) for key in keys]
            for key, records in zip(keys, found, strict=True):
                if records is not None:
                    entries.move_to_end(key)
            return found

    def put(self, key: Key, records: list[AttemptRecord]) -> None:
        if len(records) > self.max_records:
            return
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = records
            self._records += len(records)
            while self._records > self.max_records:
                _, dropped = self._entries.popitem(last=False)
                self._records -= len(dropped)

    def __len__(self) -> int:
        return len(self._entries)


ENTRIES: Final = EntryCache()
"""The process's cache (`walk.fetch_entries`)."""
