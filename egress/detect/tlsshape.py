"""What a TLS connection carries, told from the sizes, order and timing of its records: TLS inside TLS, SSH
inside TLS, an interactive shell. For TLS that a network rule lets through without decryption (the front relays it
through a `TlsShape`).

The watcher reads only the 5-byte record headers (RFC 8446 §5.1, RFC 5246 §6.2) of both directions, in the order
the relay received them, plus the ServerHello (version and cipher suite, which fix the per-record overhead of an
AEAD suite: TLS 1.3 adds a 16-byte tag and the 1-byte inner type, RFC 8446 §5.2; TLS 1.2 AES-GCM adds an 8-byte
explicit nonce and a 16-byte tag, RFC 5288 §3; TLS 1.2 ChaCha20-Poly1305 a 16-byte tag, RFC 7905). From that it
knows the plaintext size of each application-data record after the handshake (TLS 1.3: the client's first
encrypted record is its Finished; the server's encrypted records before it are its handshake). Three shapes:

- ``tls-in-tls``: nDPI's obfuscated-TLS heuristic (ntop/nDPI ``src/lib/protocols/tls.c``,
  ``tls_obfuscated_heur_search`` and ``check_set``, read at commit 3b1286ab), after Xue et al., "Fingerprinting
  Obfuscated Proxy Traffic with Encapsulated TLS Handshakes", USENIX Security 2024: the byte counts of the first
  four bursts (client, server, client, server; a burst is consecutive records of one direction) lie within a
  Mahalanobis distance of one of nDPI's handshake models, the first burst in at most 3 records. Where we differ:
  only the window at the first client burst is tried (nDPI tries later ones, for tunnels that talk before their
  inner handshake; a tunnel client starts it at once); nDPI's TLS 1.2 Firefox model (a 212-byte hello) is left
  out, it matched 1 in 100 random exchanges under 1 KB (an API client's 250-byte request, 900-byte answer,
  120-byte request); the third burst (the inner Finished) must be under half the first (the inner hello) and the
  second (the inner certificates) at least the first: without that, a keep-alive HTTPS client with 1.5 KB
  requests and 5 KB answers falls within the Chrome model. We add the OpenSSL shape seen in the lab (curl inside
  stunnel): an inner ClientHello record of exactly 517 bytes (a 512-byte padded hello and its header) answered by
  more than 1000 bytes. Measured: the 5 lab tunnels found, 0 of 19 recorded HTTPS sessions, and still 4% of
  exchanges of uniformly random sizes (40 B-20 KB): that is why it is only recorded.
- ``ssh-in-tls``, first at SSH's opening, read by `egress.detect.sshopening` two ways: one packet per record
  (decided on the client's first encrypted packet), and from the sums of the two sides' turns, however the bytes
  are cut into records (decided on the server's SERVICE_ACCEPT, which is not forwarded: no user authentication
  starts). Neither forwards anything a shell needs. If the opening is hidden, SSH's packet sizes with
  the AEAD and encrypt-then-MAC ciphers OpenSSH uses (chacha20-poly1305, aes-gcm, *-etm) are a clear 4-byte
  length, a multiple of the cipher's block (8 or 16) and a 16- or 32-byte tag: ``4 (mod 8)`` bytes. Among the
  last 10 small records (plaintext under 1024 bytes) 8 or more are ``4 (mod 8)``, in 5 or more distinct sizes:
  OpenSSH reaches that at the end of user authentication (lab: the 12th small record, the server's
  USERAUTH_SUCCESS), before any channel opens. Random sizes meet it with odds of about 2e-6 per window.
- ``interactive-shell``: keystroke echo. 8 times, one side sends a record of at most 64 plaintext bytes at least
  20 ms after its previous one and the other side answers with at most 128 bytes within 100 ms: typing into a
  terminal (either side types: ``ssh -R`` puts the keyboard at the far end).

Known gaps (docs/security.md, "Opaque streams"): record padding (TLS 1.3 allows it), SSH_MSG_IGNORE packets
in the opening or a wrapper that holds bytes back across the peer's turns hide the SSH sizes (`sshopening`); a
line-mode shell (no echo) is a request-response exchange like any RPC. A pool's session inside TLS is not this
watcher's: `egress.detect.miningshape` reads the same records for job pushes and share answers over the first
minute; a few calls that then leave (no session shape) stay untold from RPC over TLS.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from egress.detect import sshopening, tls, tlsfast
from egress.detect.base import MORE, Category, Finding, evidence

NAME = "tlsshape"

MAX_RECORDS: Final = 160
"""Application records watched per connection; every shape above shows well before (lab: under 40)."""
SMALL: Final = 1024
SSH_WINDOW, SSH_MATCHES, SSH_SIZES = 10, 8, 5
RECORDS_CAP: Final = 8192
"""Past `MAX_RECORDS`, records still read (not kept) while SSH's opening may be under way (at most
`sshopening.OPENING_BURSTS` bursts, `sshopening.OPENING_BYTES`): a client that cuts its opening into tiny records
must not outlast the watch; only `sshopening.by_turns` runs then, so a bulk transfer still ends the watch at
`MAX_RECORDS` (its first 16 KiB records pass the byte bound at once) and goes to splice(2)."""
ECHO_PAIRS, ECHO_KEY, ECHO_ANSWER = 8, 64, 128
ECHO_GAP, ECHO_WITHIN = 0.020, 0.100
"""Seconds: a keystroke comes at least this long after the typist's previous record; its echo within this."""

SUSPECTED: Final = frozenset({"tls-in-tls", "interactive-shell"})
"""Shapes that ordinary TLS can take too (a first request larger than the next, a poller with small answers): they
are recorded, not blocked (`egress.decide.decide_suspicion`), and watching goes on. ``ssh-in-tls`` is not."""

_APPLICATION, _HANDSHAKE, _CCS = 23, 22, 20
_GCM12: Final = frozenset({0x009C, 0x009D, 0x009E, 0x009F, 0xC02B, 0xC02C, 0xC02F, 0xC030, 0xC0AC, 0xC0AD})
_CHACHA12: Final = frozenset({0xCCA8, 0xCCA9, 0xCCAA, 0xCCAC, 0xCCAD})

# nDPI's models (tls.c, check_set): inverse covariance matrix (row-major 4x4), mean, distance threshold.
_MODELS: Final = (
    ((3.08030337925007e-05, 1.16179172096944e-07, 1.05356744968627e-07, 3.8862884355278e-08,
      1.16179172096944e-07, 6.93179117519316e-07, 2.77413220880937e-08, -3.63723200682445e-09,
      1.05356744968627e-07, 2.77413220880937e-08, 1.0260950589675e-06, -1.08769813590053e-08,
      3.88628843552779e-08, -3.63723200682445e-09, -1.08769813590053e-08, 8.63307792288604e-08),
     (640.657378447541, 4649.30338356554, 448.408302530566, 1094.2013079329), 3.0, 517),
    ((6.72374390966642e-06, -2.32109583941723e-08, 6.67140014394388e-08, 1.2526322628285e-08,
      -2.32109583941723e-08, 5.64668947932086e-07, 4.58963631972597e-08, 6.41254684791958e-09,
      6.67140014394388e-08, 4.58963631972597e-08, 6.04057768431344e-07, -9.1507432597718e-10,
      1.2526322628285e-08, 6.41254684791958e-09, -9.1507432597718e-10, 1.01184796635481e-07),
     (1850.43045387994, 4903.07735480722, 785.25280624695, 1051.22303562714), 3.0, 0),
)  # fmt: skip
"""(inverse covariance, mean, distance below which it matches, smallest first burst nDPI accepts)."""
_TRIED_WINDOWS: Final = 1
INNER_HELLO: Final = 517
_NONE: Final[frozenset[str]] = frozenset()


def mahalanobis(x: tuple[int, ...], mean: tuple[float, ...], inverse: tuple[float, ...]) -> float:
    """nDPI's ``ndpi_mahalanobis_distance`` (ndpi_analyze.c)."""
    size = len(x)
    diff = [x[i] - mean[i] for i in range(size)]
    tmp = [sum(diff[j] * inverse[size * j + i] for j in range(size)) for i in range(size)]
    return math.sqrt(max(0.0, sum(tmp[i] * diff[i] for i in range(size))))


@dataclass(frozen=True, slots=True)
class Record:
    from_client: bool
    size: int
    """Plaintext bytes (the record's length minus the suite's overhead)."""
    at: float


@dataclass(slots=True)
class _Side:
    buffer: bytes = b""
    skip: int = 0
    """Body bytes of the current record still to pass."""
    encrypted: int = 0
    """Type-23 records seen."""
    lost: bool = False
    """The server's bytes are not TLS (no ServerHello, or a header no record has): no more read of them."""


@dataclass(slots=True)
class TlsShape:
    """One TLS connection's records; `feed` each chunk the relay receives, in order, with its arrival time."""

    client: _Side = field(default_factory=_Side)
    server: _Side = field(default_factory=_Side)
    hello: bytes = b""
    """The server's first bytes, until its ServerHello parses."""
    version: int = 0
    overhead: int | None = None
    client_finished: bool = False
    records: list[Record] = field(default_factory=list)
    turns: list[tuple[bool, int]] = field(default_factory=list)
    """(from client, plaintext bytes) of each burst of the records read (`sshopening.add_turn`)."""
    count: int = 0
    """Application records read (`records` keeps the first `MAX_RECORDS`)."""
    client_records: int = 0
    """The client's records among `records` (`sshopening.by_record` reads 4 or 5 of them, nothing else)."""
    plaintext: int = 0
    found: list[Finding] = field(default_factory=list)
    """Every finding so far, each protocol once, in order."""
    done: bool = False
    """Nothing more to watch: a blocking shape found (``ssh-in-tls``, ``not-tls``), or `MAX_RECORDS` records once
    the server said a ServerHello."""
    window: tuple[Finding | None] | None = None
    """`_tls_in_tls`'s answer once its window of bursts is whole (`TlsShape._tls_in_tls`)."""
    suspicions: bool = True
    """Also look for the `SUSPECTED` shapes; False where they would not be reported (the front's watch of a host
    rule's bound name), which also saves their cost on every record of a bulk transfer."""

    def feed(self, from_client: bool, data: bytes, now: float) -> Finding | None:
        """The finding these bytes completed, if any (each protocol is returned once; watching goes on after a
        `SUSPECTED` one)."""
        if self.done:
            return None
        before = len(self.found)
        side = self.client if from_client else self.server
        if side.lost:
            return None
        if not from_client and not self.version:
            self._server_hello(data)
            if side.lost:  # the ServerHello did not parse
                return None
        lengths, side.skip, side.buffer, bad = _frame_of(side.buffer + data if side.buffer else data, side.skip)
        for length in lengths:
            self._record(from_client, side, length, now)
            if self.done:  # nothing more to watch: the records after this one are not read
                break
        else:
            if bad and from_client:
                self._not_tls(data)
            elif bad:
                side.lost = True  # the server's bytes: what it sends goes to the sandbox; the client's are read on
        return self.found[before] if len(self.found) > before else None

    def _not_tls(self, data: bytes) -> None:
        """The client's bytes are no TLS record after its ClientHello (red team 12b: Stratum in clear behind a
        real hello to an allowed name reached the pool): a TLS client sends nothing else, so it is a tunnel."""
        text = f"client bytes that are no TLS record after its ClientHello: {data[-48:]!r}"
        self.found.append(Finding(Category.TUNNEL, "not-tls", NAME, evidence(text)))
        self.done = True

    def _server_hello(self, data: bytes) -> None:
        self.hello += data
        parsed = tls.parse_server_hello(self.hello)
        if parsed is MORE and len(self.hello) < 64 * 1024:
            return
        self.hello = b""
        if not isinstance(parsed, tls.ServerHello):
            self.server.lost = True
            return
        self.version = parsed.version
        if parsed.version >= 0x0304:
            self.overhead = 17
        elif parsed.cipher_suite in _GCM12:
            self.overhead = 24
        elif parsed.cipher_suite in _CHACHA12:
            self.overhead = 16
        else:
            self.overhead = None  # CBC and the rest: padding hides the sizes

    def _record(self, from_client: bool, side: _Side, length: int, now: float) -> None:
        side.encrypted += 1
        if self.version >= 0x0304:
            if from_client and side.encrypted == 1:
                self.client_finished = True  # the client's Finished
                return
            if not from_client and not self.client_finished:
                return  # the server's encrypted handshake
        size = length - (self.overhead if self.overhead is not None else 24)
        record = Record(from_client, max(size, 0), now)
        self.count += 1
        self.plaintext += record.size
        sshopening.add_turn(self.turns, record)
        if self.count > MAX_RECORDS:
            checks = 1  # only an opening cut into tiny records keeps the watch going this far
        else:
            self.records.append(record)
            self.client_records += from_client
            checks = 5 if self.suspicions else 3
        # The checks in order, up to the first that finds a shape not found before. Each is skipped while the
        # records cannot hold its shape yet (exact: tests/detect/test_tlsfast.py compares with running them all).
        seen = {finding.protocol for finding in self.found} if self.found else _NONE
        for check in range(checks):
            if check == 0:
                finding = sshopening.by_turns(self.turns) if self.overhead is not None else None
            elif check == 1:  # only the client's fourth or fifth record can end its opening
                finding = sshopening.by_record(self.records) if from_client and 4 <= self.client_records <= 5 else None
            elif check == 2:
                finding = self._ssh() if len(self.records) >= SSH_WINDOW else None  # needs 10 small records
            elif check == 3:
                finding = self._tls_in_tls()
            else:  # a typist's pair is a turn from it to the other side: 8 pairs need 16 records
                finding = _echo(self.records) if len(self.records) >= 2 * ECHO_PAIRS else None
            if finding is not None and finding.protocol not in seen:
                self.found.append(finding)
                break
        opening = len(self.turns) <= sshopening.OPENING_BURSTS and self.plaintext <= sshopening.OPENING_BYTES
        # Without a ServerHello the stream is no TLS session yet (a server that is not TLS, or none that answered):
        # the watch goes on past MAX_RECORDS, so that records the client sends to outlast it buy nothing.
        if any(f.protocol not in SUSPECTED for f in self.found) or (
            self.version and self.count >= MAX_RECORDS and (not opening or self.count >= RECORDS_CAP)
        ):
            self.done = True

    def _tls_in_tls(self) -> Finding | None:
        """`_tls_in_tls` of the records, kept once its window is whole: it reads the first five bursts from the
        first client burst, which later records cannot change (they only add to the last burst or begin one)."""
        if self.window is not None:
            return self.window[0]
        # ``turns`` holds the records' bursts (`_bursts`, without their record counts) while every record is kept
        start = 0 if self.turns and self.turns[0][0] else 1
        if len(self.turns) < start + 5:
            return None  # no whole window yet: `_tls_in_tls` finds nothing
        finding = _tls_in_tls(self.records)
        self.window = (finding,)
        return finding

    def _ssh(self) -> Finding | None:
        if self.overhead is None:
            return None
        small = [record.size for record in self.records if record.size < SMALL][-SSH_WINDOW:]
        aligned = [size for size in small if size % 8 == 4]
        if len(small) < SSH_WINDOW or len(aligned) < SSH_MATCHES or len(set(aligned)) < SSH_SIZES:
            return None
        text = f"{len(aligned)} of the last {len(small)} small records are SSH packets (4 mod 8): {small}"
        return Finding(Category.TUNNEL, "ssh-in-tls", NAME, evidence(text))


def _frame(data: bytes, skip: int) -> tuple[list[int], int, bytes, bool]:
    """One side's bytes cut into records (RFC 8446 §5.1), from ``skip`` body bytes of a record still to pass: the
    lengths of the application-data records whose 5-byte headers are whole, in order; the body bytes still to pass
    after ``data``; an unfinished header (to join to the next chunk); and whether a header that no TLS record has
    ended the stream (the records after it are not TLS). The pure twin of _tlsfast.c's ``frame``."""
    lengths: list[int] = []
    offset = 0
    while offset < len(data):
        if skip:
            step = min(skip, len(data) - offset)
            skip -= step
            offset += step
            continue
        if len(data) - offset < 5:
            return lengths, skip, data[offset:], False
        kind, length = data[offset], int.from_bytes(data[offset + 3 : offset + 5])
        if kind not in (_CCS, 21, _HANDSHAKE, _APPLICATION) or data[offset + 1] != 3:
            return lengths, skip, b"", True
        skip = length
        offset += 5
        if kind == _APPLICATION:
            lengths.append(length)
    return lengths, skip, b"", False


_frame_of: Callable[[bytes, int], tuple[list[int], int, bytes, bool]] = (
    tlsfast.COMPILED.frame if tlsfast.COMPILED is not None else _frame
)
"""`_frame`, compiled where _tlsfast.c was built (`egress.detect.tlsfast`)."""


def _bursts(records: list[Record]) -> list[tuple[bool, int, int]]:
    """(from client, bytes, records) of each run of one direction."""
    bursts: list[tuple[bool, int, int]] = []
    for record in records:
        if bursts and bursts[-1][0] == record.from_client:
            side, size, count = bursts[-1]
            bursts[-1] = (side, size + record.size, count + 1)
        else:
            bursts.append((record.from_client, record.size, 1))
    return bursts


def _tls_in_tls(records: list[Record]) -> Finding | None:
    bursts = _bursts(records)
    starts = [index for index, burst in enumerate(bursts) if burst[0]][:_TRIED_WINDOWS]
    for start in starts:
        window = bursts[start : start + 5]
        if len(window) < 5:  # a burst is whole only once the next one began
            continue
        sizes = tuple(burst[1] for burst in window[:4])
        if window[0][2] > 3 or sizes[2] * 2 > sizes[0] or sizes[1] < sizes[0]:
            continue  # nDPI's limit on the hello; a Finished far smaller than a hello; certificates larger
        close = any(
            sizes[0] >= smallest and mahalanobis(sizes, mean, inverse) < threshold
            for inverse, mean, threshold, smallest in _MODELS
        )
        first = next(record for record in records if record.from_client)
        openssl = start == starts[0] and first.size == INNER_HELLO and sizes[1] > 1000
        if close or openssl:
            text = f"bursts {sizes} after the handshake: a TLS handshake inside TLS"
            return Finding(Category.TUNNEL, "tls-in-tls", NAME, evidence(text))
    return None


def _echo(records: list[Record]) -> Finding | None:
    pairs = {True: 0, False: 0}
    last: dict[bool, float] = {}
    for previous, record in itertools.pairwise(records):
        typist = previous.from_client
        gap = previous.at - last.get(typist, -1.0)
        last[typist] = previous.at
        if (
            record.from_client != typist
            and previous.size <= ECHO_KEY
            and record.size <= ECHO_ANSWER
            and gap >= ECHO_GAP
            and record.at - previous.at <= ECHO_WITHIN
        ):
            pairs[typist] += 1
    for typist, count in pairs.items():
        if count >= ECHO_PAIRS:
            text = f"{count} keystroke-sized records from the {'client' if typist else 'server'} echoed at once"
            return Finding(Category.TUNNEL, "interactive-shell", NAME, evidence(text))
    return None
