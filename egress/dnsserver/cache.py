"""The resolver's answer cache: an upstream answer kept for its TTL, so a name asked again is not forwarded again.

What is kept is the upstream's message, under the query the resolver forwards for it with its id zeroed
(`egress.dnsserver.forward.upstream_query`: the lowercased name, type and class, the RD and CD bits, whether EDNS
and DO were asked): two queries share an entry exactly when they would have been forwarded as the same bytes.

The cache holds no policy. A hit goes through everything a miss goes through after the upstream exchange: the
answer is judged for the asking sandbox (`egress.dnsserver.answers`), its kept addresses bound again with the
TTLs that remain. The tunnel detectors and the query's decision come before the cache, so they see every query.

- Lifetime: the smallest TTL of the answer and authority records, at most `MAX_TTL`; a negative answer (NXDOMAIN,
  or NOERROR without answers) lives for its SOA's TTL or MINIMUM, whichever is smaller (RFC 2308 §5), at most
  `NEGATIVE_TTL`, and is not kept without an SOA. A TTL of 0 is not kept. Neither are SERVFAIL and other rcodes,
  truncated answers or a message that did not parse whole.
- A hit returns the message as received and the seconds it has been kept: the resolver lowers every TTL it hands out
  by that age (`aged`; RFC 1035 §4.1.3: a resolver hands out the time that remains), OPT records untouched (their
  TTL field holds flags). Each entry also keeps the judgements made of its message (`Cached.judged`, filled by the
  resolver): the same message judged for the same sandbox and rule is judged once.
- Bounded: `MAX_ENTRIES` entries, least recently used evicted first, so an agent that asks endless names under an
  allowed wildcard costs a fixed amount of memory.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Final

from egress.detect import dns

MAX_ENTRIES: Final = 10_000
MAX_TTL: Final = 3600
"""Seconds at most an answer is kept, whatever its TTL says."""
NEGATIVE_TTL: Final = 300
"""Seconds at most a negative answer is kept."""


@dataclass(frozen=True, slots=True)
class Cached:
    """An upstream answer as the cache gives it: the message as received, its age in whole seconds, and the
    judgements the resolver made of it (a memo that lives as long as the entry)."""

    message: dns.Message
    age: int = 0
    judged: dict[object, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Entry:
    cached: Cached
    stored: float
    expires: float


def negative_ttl(message: dns.Message) -> int | None:
    """How long a negative answer may be kept: its SOA's TTL or MINIMUM, whichever is smaller (None: no SOA)."""
    for record in message.authorities:
        if record.rtype == dns.SOA and len(record.data) >= 20:
            minimum = int.from_bytes(record.data[-4:], "big")
            return min(record.ttl, minimum)
    return None


def lifetime(message: dns.Message) -> int:
    """Seconds ``message`` (an upstream answer) may be kept; 0 when it must not be."""
    if message.problem or message.tc or message.rcode not in (dns.NOERROR, dns.NXDOMAIN):
        return 0
    if message.rcode == dns.NXDOMAIN or not message.answers:
        ttl = negative_ttl(message)
        return 0 if ttl is None else max(0, min(ttl, NEGATIVE_TTL))
    records = [record for record in (*message.answers, *message.authorities) if record.rtype != dns.OPT]
    return max(0, min([MAX_TTL, *(record.ttl for record in records)]))


def aged(records: tuple[dns.Record, ...], age: int) -> tuple[dns.Record, ...]:
    """``records`` with each TTL lowered by ``age`` seconds (at least 0), OPT records as they are."""
    if age <= 0:
        return records
    return tuple(
        record if record.rtype == dns.OPT else replace(record, ttl=max(0, record.ttl - age)) for record in records
    )


class AnswerCache:
    """Upstream answers by forwarded query (id zeroed); `get` returns a copy with the TTLs that remain."""

    def __init__(self, max_entries: int = MAX_ENTRIES, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries = max_entries
        self.clock = clock
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(forwarded: bytes) -> bytes:
        """The entry's key: the forwarded query without its id."""
        return b"\0\0" + forwarded[2:]

    def get(self, forwarded: bytes, counted: bool = True) -> Cached | None:
        """The answer kept for ``forwarded``, if it has not expired (``counted``: into `hits` and `misses`)."""
        key = self.key(forwarded)
        entry = self._entries.get(key)
        now = self.clock()
        if entry is None or now >= entry.expires:
            if entry is not None:
                del self._entries[key]
            self.misses += counted
            return None
        self._entries.move_to_end(key)
        self.hits += counted
        age = int(now - entry.stored)
        return entry.cached if age <= 0 else Cached(entry.cached.message, age, entry.cached.judged)

    def reuse(self, key: bytes, cached: Cached) -> bool:
        """Whether what `get` would return under ``key`` (`key` of a forwarded query) now is ``cached``: the same
        message, kept the same whole seconds (changes nothing: `touch` counts the hit once it is used; the resolver's
        fast path, `egress.dnsserver.fast`, asks this instead of building the forwarded query)."""
        entry = self._entries.get(key)
        if entry is None or entry.cached.message is not cached.message:
            return False
        now = self.clock()
        return now < entry.expires and int(now - entry.stored) == cached.age

    def touch(self, key: bytes) -> None:
        """Count a hit under ``key`` that `reuse` allowed, and keep its entry fresh, as `get` does."""
        self._entries.move_to_end(key)
        self.hits += 1

    def put(self, forwarded: bytes, message: dns.Message) -> Cached:
        """Keep ``message``, the upstream's answer to ``forwarded``, if and as long as `lifetime` allows; returns
        it as a hit of age 0 would (kept or not)."""
        cached = Cached(message)
        ttl = lifetime(message)
        if ttl <= 0 or self.max_entries <= 0:
            return cached
        key = self.key(forwarded)
        now = self.clock()
        self._entries[key] = _Entry(cached, now, now + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return cached

    def clear(self) -> None:
        self._entries.clear()
