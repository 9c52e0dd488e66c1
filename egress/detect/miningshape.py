"""Mining inside TLS, told without decrypting it from the sizes, direction and timing of the application records
of TLS that a network rule lets through (the front relays it through `egress.proxy.relay.Watch`, which hands this
watcher the records `egress.detect.tlsshape.TlsShape` reads: plaintext sizes, each with its arrival time).

A pool client (Stratum v1, XMRig's and Ethereum's JSON-RPC dialects) holds one connection for hours and says
little on it: a login answered with a job, then jobs the pool pushes unasked (``mining.notify``, ``job``, an
``eth_getWork`` result) every few seconds to minutes, each about the size of the first (the same fields, new
values), and shares the miner submits, each answered at once by a tiny result (``{"id":4,"result":true}``).
Research on public mining captures found the same: flows lasting hours, small packets (40-120 bytes), pushes
cyclic at 30-100 s (Veselý and Žádník, "How to Detect Cryptocurrency Miners? By Traffic Forensics!", Digital
Investigation 29, 2019, §4, after D'Herdt's SANS report; their captures are the nesfit files of
../shared/corpus/mining), and the byte symmetry and packet timing of miners' flows (Plný et al., DeCrypto, CESNET
2022, ``FeatureGenerator.pyx``). Those work on whole flows after the fact, confirmed by probing the server; this
watcher must decide inline, within the flow's first minute, on the records alone. What it counts:

- a *push*: a server record of job size (`PUSH_MIN`-`PUSH_MAX` plaintext bytes) whose previous record was the
  server's own at least `QUIET` before, with the client silent for over `ANSWER_WITHIN`: nobody asked for it;
- *regular jobs*: the pushes' sizes lie within `JOB_SPREAD` of their median, and some answer to a client record
  (any record of the server's burst after the login or a ``getWork`` poll: a TLS 1.3 server's session tickets
  may come first) has about that size too (`ECHO_BELOW`, `ECHO_ABOVE`): the job came once as an answer, then
  unasked;
- a *share*: a client record of at least `REQUEST_MIN` bytes whose first answer (within `ANSWER_WITHIN`) is a
  tiny record (at most `ACK_MAX`); counted only while every such tiny answer has one size (within a byte: the
  same ``{"id":N,"result":true}``);
- *low rate*: no record over `BULK`, at most `MAX_BYTES` both ways, at most `MAX_RATE` records a second;
- *few shapes*: at most `MAX_SHAPES` distinct record sizes each way (a miner says a few things over and over).

Mining (protocol ``mining-in-tls``) when, at low rate and in few shapes, either the server pushed regular jobs
`PUSHES` times over at least `SPAN` and the client spoke again after its opening (a record of at least
`REQUEST_MIN` bytes after the server's first answer: a miner polls, reports or submits; a one-way notification
stream does not), or the client submitted `SHARES` shares and the server pushed a job at least once; either way
some answer carried the job too. Two rules rest on a single job, on a nearly silent connection (at most
`QUIET_RATE` records a second, every server record an answer or a push): a *lone job*, the client silent since its
one request, a job pushed after `JOB_WAIT` of silence, and the login's answer that job in its wrapper (from its size
to `ECHO_ABOVE` times it: a feed's event as large as its first answer or smaller is not it); and *work*, a share
submitted after a pushed job, whose job some answer of the opening carried among its other answers (up to
`BUNDLE_ABOVE` times the job). The evidence lists the features. A bulk record or `MAX_BYTES` ends watching, and
so does the end of the window: the decision is made within the flow's first minute or not at all.

Times are in units of `MINUTE`: a watcher made with ``window=6.0`` reads every time above a tenth as long, so a
lab replaying recorded sessions ten times faster sees what the gateway would see in real time (the policy's
``detectors.mining_shape_window``, docs/policy.md). Decisions use only the times the caller gives (`Record.at`).

Known gaps (docs/security.md, "Opaque streams"): a miner that pads its records or adds cover traffic, a pool
that pushes no job within the window and a client that finds no share in it (flypool's Zcash sessions in the
corpus: the opening, then silence past the minute), and short connections (a probe that subscribes and leaves) are not
found; a WebSocket or server-sent-event feed whose events have one size, with a client that also talks, can take
the shape, and so can a quiet feed whose one event in its first minute comes 10 s after an answer a little larger
than it (the lone-job rule), which is why the default action is ``record``
(`egress.policy.model.DetectorActions.mining_shape`).
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from egress.detect.base import Category, Finding, evidence
from egress.detect.tlsshape import Record

NAME = "tls-shape"
PROTOCOL = "mining-in-tls"

MINUTE: Final = 60.0
"""Seconds of the default window; every time below is for this window and scales with the watcher's."""
QUIET: Final = 0.5
"""Seconds of silence before a server record that makes it a push (the eth pool in the corpus pushes 0.9 s after
its previous push)."""
ANSWER_WITHIN: Final = 2.0
"""Seconds after a client record within which a server record answers it (a pool in the corpus: 1.4 s); a push
comes later (a streamed answer's body a second after its headers is no push)."""
SPAN: Final = 5.0
"""Seconds from the first counted push to the last."""
PUSH_MIN, PUSH_MAX = 100, 2048
"""Plaintext bytes of a job: 242-335 in the corpus (Monero, Zcash, Ethereum); Bitcoin's with merkle branches more."""
JOB_SPREAD: Final = 8
"""Bytes: pushes are regular when each lies within this of their median size (a job's fields are fixed-width hex;
the corpus's pushes of one session are of one size)."""
ECHO_BELOW, ECHO_ABOVE = 16, 1.3
"""An answer carries the job when its size is from 16 bytes under the pushes' median to 1.3 times it plus 16 (the
login's answer wraps the job in an id and a status: 278 and 303 bytes for pushes of 242 and 253)."""
REQUEST_MIN, ACK_MAX = 64, 100
"""A client record that asks for something: a login, a poll (81 bytes in the corpus), a share (a nonce and a result
hash: 148-2851 bytes); smaller ones (an HTTP/2 PING's or SETTINGS' acknowledgement) ask for nothing. A share's
answer is tiny (25-63 bytes in the corpus)."""
PUSHES, SHARES = 2, 2
BUNDLE_ABOVE: Final = 2.0
"""An answer that carries the job among the opening's other answers (a Zcash pool answers ``mining.subscribe``,
``mining.authorize``, ``mining.set_target`` and ``mining.notify`` in one write: 522 bytes for jobs of 297) is at
most this many times the pushes' median plus 16 (`Features.bundle`)."""
QUIET_RATE: Final = 0.5
"""Records a second at most for the rules that rest on a single job (`mining`): a pool client between jobs is
nearly silent (the corpus: 0.1-0.2); a conversation is not."""
JOB_WAIT: Final = 10.0
"""Seconds of silence, both ways, before a lone push (`Features.wait`): a pool's next job comes seconds to a minute
after the login's (xmr-eu1: 16 s); a streamed answer's next piece, a ticket or a keep-alive comes at once or is
not of job size."""
BULK: Final = 4096
MAX_BYTES: Final = 64 * 1024
MAX_SHAPES: Final = 5
"""Distinct record sizes per direction (`Features.shapes`): a pool client's login, share, poll, hashrate report
and keep-alive; a pool's login answer, job, tiny result and difficulty (the corpus: at most 4)."""
MAX_RATE: Final = 2.0
"""Records a second over the flow's life so far (the eth clients in the corpus: about 0.5)."""


@dataclass(frozen=True, slots=True)
class Features:
    """What the watcher measured over one flow's records so far (the evidence prints these)."""

    seconds: float
    records: int
    up: int
    down: int
    largest: int
    pushes: tuple[int, ...]
    """Sizes of the pushes, in order."""
    push_gaps: tuple[float, ...]
    """Seconds between consecutive pushes."""
    echo: int | None
    """The size of an answer that carries the job (see the module docstring), if any."""
    shares: int
    ack: int | None
    """The tiny answers' common size."""
    client_again: bool
    """The client sent a record after its opening exchange."""
    shapes: tuple[int, int]
    """Distinct record sizes (sizes within `JOB_SPREAD` of each other count once) from the client, from the server."""
    requests: int = 0
    """Client records of at least `REQUEST_MIN` bytes (a login, a poll, a share)."""
    unexplained: int = 0
    """Server records that are neither an answer nor a push."""
    wait: float = 0.0
    """Seconds of silence before the first push (since the record before it)."""
    wrapped: int | None = None
    """The size of an answer that carries the job in a wrapper (an id, a status): from the pushes' median to
    `ECHO_ABOVE` times it plus 16; a TLS 1.3 server's session tickets, smaller, are not it."""
    bundle: int | None = None
    """The size of an answer that carries the job among other answers (`BUNDLE_ABOVE`), if any."""
    share_after_push: bool = False
    """A share was submitted after the first push: work on a job the pool pushed."""

    def text(self) -> str:
        gaps = "/".join(f"{gap:.0f}" for gap in self.push_gaps[:4])
        sizes = f"{min(self.pushes)}-{max(self.pushes)}B" if self.pushes else "-"
        return (
            f"{self.seconds:.0f}s {self.records} records max {self.largest}B up {self.up}B down {self.down}B; "
            f"{len(self.pushes)} pushes {sizes} gaps {gaps or '-'}s; job answer {self.echo or '-'}B; "
            f"{self.shares} shares ack {self.ack or '-'}B; sizes {self.shapes[0]}/{self.shapes[1]}"
        )


@dataclass(slots=True)
class MiningShape:
    """One connection's application records; `add` each in order. ``window``: seconds of the default one-minute
    window (see the module docstring)."""

    window: float = MINUTE
    records: list[Record] = field(default_factory=list)
    done: bool = False
    """Found, or nothing more to watch (bulk, too many bytes, or past the window)."""
    total: int = 0
    """The records' bytes both ways."""
    pushed: bool = False
    """A push is among the records (`measure` would count one): until then no rule can hold."""
    last_client: Record | None = None
    """The client's latest record (a push comes more than `ANSWER_WITHIN` after it)."""

    def add(self, record: Record) -> Finding | None:
        """The finding this record completed, if any (returned once; watching ends with it)."""
        if self.done:
            return None
        scale = self.window / MINUTE
        if self.records and record.at - self.records[0].at > self.window:
            self.done = True  # decided within the first window, or not at all
            return None
        previous = self.records[-1] if self.records else None
        self.records.append(record)
        self.total += record.size
        if record.from_client:
            self.last_client = record
        elif not self.pushed and previous is not None and self.last_client is not None:
            self.pushed = _push(record, previous, self.last_client, scale)
        if not self.pushed:
            # Every rule of `mining` needs a push, and whether a record is one depends only on the records before
            # it (`_push`, as `measure` counts it): until the first, only the limits are read. Measuring all
            # records at each new one was most of the watch's cost per connection (the whole of a short one's).
            if record.size > BULK or self.total > MAX_BYTES:
                self.done = True
            return None
        features = measure(self.records, scale)
        if features.largest > BULK or features.up + features.down > MAX_BYTES:
            self.done = True
            return None
        if not mining(features, scale):
            return None
        self.done = True
        return Finding(Category.MINING, PROTOCOL, NAME, evidence(features.text()))


def measure(records: list[Record], scale: float = 1.0) -> Features:
    """The features of a flow's records (the times of a window ``scale`` minutes long)."""
    pushes: list[Record] = []
    answers: list[int] = []
    acks: list[int] = []
    ack_times: list[float] = []
    late: list[int] = []
    unexplained = 0
    wait = 0.0
    client_again = answered = False
    last_client: Record | None = None
    for index, record in enumerate(records):
        previous = records[index - 1] if index else None
        if record.from_client:
            if record.size >= REQUEST_MIN and answered:
                client_again = True  # a poll, a report or a share after the opening's answer
            last_client = record
            continue
        answered = True
        if previous is None or last_client is None:
            continue  # before the client asked anything: a TLS 1.3 server's session tickets
        since_client = record.at - last_client.at
        asked = last_client.size >= REQUEST_MIN and since_client <= ANSWER_WITHIN * scale
        if asked and (previous.from_client or record.at - previous.at < QUIET * scale):
            answers.append(record.size)  # the answer's burst: TLS 1.3 session tickets may come first
            if previous.from_client and record.size <= ACK_MAX:
                acks.append(record.size)
                ack_times.append(record.at)
        elif asked:
            late.append(record.size)  # in the answer window after a pause: the answer's late piece (a busy relay)
        elif _push(record, previous, last_client, scale):
            if not pushes:
                wait = (record.at - previous.at) / scale
            pushes.append(record)
        else:
            unexplained += 1
    median = statistics.median(push.size for push in pushes) if pushes else 0
    echo = next((size for size in answers if median - ECHO_BELOW <= size <= median * ECHO_ABOVE + 16), None)
    answered_all = answers + late
    bundle = next((s for s in answered_all if median - ECHO_BELOW <= s <= median * BUNDLE_ABOVE + 16), None)
    wrapped = next((size for size in answered_all if median <= size <= median * ECHO_ABOVE + 16), None)
    ack = acks[0] if acks else None
    up = sum(record.size for record in records if record.from_client)
    return Features(
        seconds=records[-1].at - records[0].at if records else 0.0,
        records=len(records),
        up=up,
        down=sum(record.size for record in records) - up,
        largest=max((record.size for record in records), default=0),
        pushes=tuple(push.size for push in pushes),
        push_gaps=tuple(b.at - a.at for a, b in itertools.pairwise(pushes)),
        echo=echo if pushes else None,
        shares=len(acks) if all(abs(size - acks[0]) <= 1 for size in acks) else 0,
        ack=ack,
        client_again=client_again,
        requests=sum(1 for record in records if record.from_client and record.size >= REQUEST_MIN),
        unexplained=unexplained,
        wait=wait,
        wrapped=wrapped if pushes else None,
        bundle=bundle if pushes else None,
        share_after_push=bool(pushes) and any(at > pushes[0].at for at in ack_times),
        shapes=(
            _shapes(record.size for record in records if record.from_client),
            _shapes(record.size for record in records if not record.from_client),
        ),
    )


def _push(record: Record, previous: Record, last_client: Record, scale: float) -> bool:
    """Whether server ``record`` is a push, after ``previous`` (the record before it) and ``last_client`` (the
    client's latest): the server's own record at least `QUIET` before, the client silent for over `ANSWER_WITHIN`
    (so no answer either), of job size. `MiningShape.add` asks this of each record as it comes, `measure` of all."""
    return (
        not previous.from_client
        and record.at - previous.at >= QUIET * scale
        and record.at - last_client.at > ANSWER_WITHIN * scale
        and PUSH_MIN <= record.size <= PUSH_MAX
    )


def _shapes(sizes: Iterable[int]) -> int:
    """How many sizes, merging those within `JOB_SPREAD` of a smaller one already counted."""
    count, last = 0, -BULK
    for size in sorted(sizes):
        if size - last > JOB_SPREAD:
            count += 1
            last = size
    return count


def _regular(sizes: tuple[int, ...]) -> bool:
    if not sizes:
        return False
    median = statistics.median(sizes)
    return all(abs(size - median) <= JOB_SPREAD for size in sizes)


def mining(features: Features, scale: float = 1.0) -> bool:
    """Whether the features say mining (the rule of the module docstring)."""
    rate = features.records / max(features.seconds / scale, 1.0)
    if features.largest > BULK or features.up + features.down > MAX_BYTES or rate > MAX_RATE:
        return False
    if max(features.shapes) > MAX_SHAPES:
        return False  # a miner says a few things over and over; a conversation of many sizes is something else
    span = sum(features.push_gaps) / scale
    jobs = (
        len(features.pushes) >= PUSHES
        and _regular(features.pushes)
        and span >= SPAN
        and features.echo is not None
        and features.client_again
    )
    submits = features.shares >= SHARES and len(features.pushes) >= 1 and features.echo is not None
    # One job pushed after a long silence, on a connection where the client said nothing since its login and the
    # server nothing else: a pool's second job (a feed's event would not repeat the login answer's size).
    quiet = rate <= QUIET_RATE and features.unexplained == 0
    lone_job = (
        quiet
        and len(features.pushes) == 1
        and features.wrapped is not None
        and features.requests == 1
        and features.unexplained == 0
        and features.wait >= JOB_WAIT
    )
    # A share submitted for a job the pool pushed, the login's answer carrying that job among its other answers.
    worked = quiet and features.shares >= 1 and features.share_after_push and features.bundle is not None
    return jobs or submits or lone_job or worked
