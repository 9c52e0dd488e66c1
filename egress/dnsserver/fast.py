"""The resolver's fast path: a query answered and judged moments ago, asked again, answered from prepared bytes.

Most queries repeat one a sandbox asked a moment before (every connection starts with a lookup). The slow path
(`egress.dnsserver.resolver.Resolver.answer_now`) parses the query, finds the sandbox, runs the tunnel tracker and
the name lists, decides, looks the answer up in the cache, judges it, and encodes a response. When all of that
ended in a plain allowed answer from the cache, it leaves a `Prepared` entry here, keyed by the raw query bytes
(`key_of`: the source address and the query without its id, the question's name lowercased). A later query with
the same key is answered from the entry: the response's bytes with the new id and the question as the client
wrote it (its letter case) copied in, without parsing or encoding anything.

What the slow path would decide stays what is decided, because an entry is used only while every input of that
decision is the same as when it was made:

- the policy and the name lists: an entry belongs to a policy generation (`FastPath.generation`, bumped by every
  reload, which also empties the table); the source address stands for its sandbox within one generation;
- the tunnel tracker: `DnsTunnelTracker.repeat` accounts the question exactly as `observe_message` would when it
  is a repeat of a (subdomain, type) the sandbox's pair remembers, and refuses (nothing changed) when the pair is
  held, its hold ended, or the question would count as new; then the slow path runs. So the detectors see every
  query, and a domain found tunnelling through other names is refused at its next query;
- the cached upstream answer: the entry holds the cache's entry and the whole seconds it had been kept; a query
  after the cache dropped or replaced it, or once its age (the TTLs handed out) has moved, takes the slow path,
  which prepares the entry again. So an entry lives at most one second, and never past the answer's TTL.

Everything the slow path does per answered query still happens per query (the tunnel tracker's account, the
cache's hit, the flow log), except two things merged until the fast path's decisions are next reported
(`egress.dnsserver.listen.UdpServer` reports them `egress.dnsserver.listen.REPORT_AFTER`, 0.1 s, after the first
of them; a reload, a TCP query and closing the socket report them at once). The answer's addresses are bound and
offered to the allow sets at an entry's first use after a report, not at each repeat until the next: the bindings
skip a write that would move an expiry by less than a second, the allow sets one by less than two, so those
repeats wrote nothing. And the decision is reported, batched (`AllowedBatch`): the allowed decisions that a source
made for one name under one rule until the report are reported as one `DecidedFlow` whose ``count`` says how
many (the first one's time and source port; the recorder counts them all). The decision's log line was most of a
fast answer's cost: at most one line per source, name and rule every 0.1 s, whatever the load. Only plain allowed
answers over UDP are prepared; refusals, records, would-blocks, answers with records dropped and TCP take the slow
path every time, and their decisions are reported at once, never batched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from egress.decide import Verdict
from egress.decisions import DecidedFlow, Reporter
from egress.detect.dns_tunnel import QuestionKey
from egress.dnsserver.cache import Cached
from egress.policy.model import Sandbox

MAX_ENTRIES: Final = 20_000
"""Prepared answers kept at most (the oldest forgotten first): a sandbox asking endless names costs bounded memory."""
MAX_QUERY: Final = 512
"""Longer queries are never prepared (an ordinary query with EDNS is under 100 bytes)."""
_MAX_LABEL: Final = 63

FastKey = tuple[str, bytes]
"""The source address, and the query's bytes after its id with the question's name lowercased."""


def key_of(query: bytes, source: str) -> tuple[FastKey, int] | None:
    """The key of ``query`` from ``source`` and where its question ends (past its type and class); None when the
    query cannot have a prepared answer (shorter than a header with a question, not one question, a name that is
    compressed or runs past the end)."""
    size = len(query)
    if size > MAX_QUERY or size < 17 or query[4:6] != b"\0\1":
        return None
    pos = 12
    while True:
        length = query[pos]
        if length == 0:
            break
        if length > _MAX_LABEL:  # a compression pointer or an extended label: the slow path reads those
            return None
        pos += length + 1
        if pos >= size:
            return None
    end = pos + 5
    if end > size:
        return None
    return (source, query[2:12] + query[12:pos].lower() + query[pos:]), end


@dataclass(frozen=True, slots=True)
class Prepared:
    """A plain allowed answer as the slow path made it, and what the decision and the answer depended on."""

    generation: int
    sandbox: Sandbox
    name: str
    """The judged hostname (lowercase), as reported."""
    verdict: Verdict
    tracked: QuestionKey | None
    """The question as the sandbox's tunnel tracker keys it (`egress.detect.dns_tunnel.question_key`)."""
    cache_key: bytes
    cached: Cached
    """The cache's entry the answer was made from (identity), and its age then."""
    head: bytes
    """The response's header after its id."""
    tail: bytes
    """The response after its question."""
    found: list[tuple[str, int]]
    """The answer's addresses and the TTLs handed out: bound and offered to the allow sets on each use."""


class FastPath:
    """The prepared answers of one resolver, by `FastKey`."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self.generation = 0
        self.entries: dict[FastKey, Prepared] = {}
        self.hits = 0

    def invalidate(self) -> None:
        """A reload (new policy objects): nothing prepared before is used again."""
        self.generation += 1
        self.entries.clear()

    def put(self, key: FastKey, prepared: Prepared) -> None:
        if self.max_entries <= 0:  # the fast path off (tests compare it with the slow path this way)
            return
        entries = self.entries
        entries.pop(key, None)
        entries[key] = prepared
        if len(entries) > self.max_entries:
            del entries[next(iter(entries))]

    def forget(self, key: FastKey) -> None:
        self.entries.pop(key, None)


class _Merged:
    """The first of a read's fast answers for one (source, name, rule), and how many there were."""

    __slots__ = ("count", "prepared", "sport", "ts")

    def __init__(self, ts: float, sport: int, prepared: Prepared) -> None:
        self.ts = ts
        self.sport = sport
        self.prepared = prepared
        self.count = 1


class AllowedBatch:
    """The fast path's allowed decisions not yet reported, merged per (source, name, rule) (see the docstring);
    the `DecidedFlow` of each is made when it is reported, not per query."""

    def __init__(self, listen_address: str = "") -> None:
        self.listen_address = listen_address
        """The decisions' destination address (the resolver's own)."""
        self.pending: dict[tuple[str, str, str], _Merged] = {}

    def __len__(self) -> int:
        return len(self.pending)

    def add(self, ts: float, src: str, sport: int, prepared: Prepared) -> None:
        """One allowed answer from ``prepared`` to ``src``:``sport``, decided at ``ts`` (wall clock)."""
        key = (src, prepared.name, prepared.verdict.rule)
        merged = self.pending.get(key)
        if merged is None:
            self.pending[key] = _Merged(ts, sport, prepared)
        else:
            merged.count += 1

    def flush(self, reporter: Reporter) -> None:
        """Report what was merged, one decision per key with its count."""
        pending, self.pending = self.pending, {}
        for (src, name, _rule), merged in pending.items():
            prepared = merged.prepared
            reporter.report(DecidedFlow(merged.ts, prepared.sandbox.name, src, merged.sport, self.listen_address, 53,
                                        "udp", name, prepared.verdict, count=merged.count))  # fmt: skip
