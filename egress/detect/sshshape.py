"""SSH that carries forwarded connections rather than a terminal, told from the sizes, direction and timing of its
encrypted traffic: a watcher fed each chunk a relay receives (the same contract as `egress.detect.tlsshape`).

Port forwarding (``ssh -L``/``-R``/``-D``, RFC 4254 §7) shows only in channel-open messages, which are encrypted;
what shows in the clear is the traffic's shape. The anchor is how research and Zeek's community scripts tell SSH
sessions apart without decrypting them: an interactive session is keystrokes, each a small client packet a human
interval after the previous one, echoed at once by a small server packet (Song, Wagner and Tian, "Timing Analysis
of Keystrokes and Timing Attacks on SSH", USENIX Security 2001; packetStrider's keystroke and ``-R`` size and
sequence patterns, ``packetStrider-ssh.py`` and its Zeek ports); an SSH tunnel of other application protocols
has their request/response rhythm and volume instead (Dusi, Crotti, Gringoli and Salgarelli, "Detection of
Encrypted Tunnels across Network Boundaries", IEEE ICC 2008, and "Tunnel Hunter", Computer Networks 53, 2009:
the sizes and inter-arrival times of the first packets tell tunnelled protocols from interactive and copy use).

What this watcher counts, after both sides' NEWKEYS (RFC 4253 §7.3; the cleartext before it is parsed, so only
encrypted chunks count) and after the first `AUTH_CHUNKS` encrypted chunks (user authentication):

- a *keystroke*: a client chunk of at most `KEY_MAX` bytes at least `KEY_GAP` after the client's previous chunk,
  answered by a server chunk of at most `ECHO_MAX` bytes within `ECHO_WITHIN` (tlsshape's ``interactive-shell``
  rule, on SSH's own packets);
- an *exchange*: a client burst (consecutive client chunks) of at least `REQUEST_MIN` bytes followed by a server
  burst of at least `ANSWER_MIN` bytes: a request of a forwarded protocol (an HTTP request, a TLS hello) and its
  answer.

``ssh-forwarding`` when, with no more than `KEYSTROKES_MAX` keystrokes seen, there were `EXCHANGES` exchanges and
at least `CLIENT_BYTES` bytes from the client and `SERVER_BYTES` from the server: bulk both ways on a session that
never looked interactive. Watching stops after `MAX_CHUNKS` chunks, at a finding, or when the session is seen to
be interactive (`KEYSTROKES_MAX` + 1 keystrokes: an interactive session that later forwards is not told).

Known gaps (docs/security.md, "Opaque streams"): a program that uses SSH as its transport and talks both ways in
rounds (``rsync``, ``git push``, ``sftp`` with pipelined reads) takes the same shape, which is why the finding is
a suspicion (recorded, not blocked: `SUSPECTED`); a forwarder that also types, or pads its traffic to keystroke
sizes (OpenSSH 9.5's keystroke obfuscation sends chaff of keystroke size, which makes a shell look *more*
interactive, never less), or forwards only a trickle, is not told; a relay that coalesces reads blurs keystrokes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Final

from egress.detect.base import Category, Finding, evidence

NAME: Final = "sshshape"
PROTOCOL: Final = "ssh-forwarding"
SUSPECTED: Final = frozenset({PROTOCOL})
"""Shapes that ordinary SSH use can take too: recorded, not blocked (`egress.decide.decide_suspicion`)."""

AUTH_CHUNKS: Final = 12
"""Encrypted chunks taken for the service request and user authentication (OpenSSH with a public key: about 9
packets, with EXT_INFO and a failed ``none`` attempt)."""
KEY_MAX, ECHO_MAX = 64, 128
"""Bytes: a keystroke's packet and its echo (36 each with OpenSSH 9's default chacha20-poly1305 and with aes-gcm;
48 with aes-ctr and hmac-sha2-256). A forwarded connection's channel open (92 in the lab) is larger."""
KEY_GAP, ECHO_WITHIN = 0.020, 0.150
"""Seconds: a keystroke comes at least this long after the typist's previous chunk; its echo within this."""
REQUEST_MIN, ANSWER_MIN = KEY_MAX + 1, 1024
"""Bytes of a client burst that asks for more than a keystroke (a forwarded HTTP request: 124 from curl on
loopback; a 26-byte request makes 68), and of the server burst answering it with more than a prompt or a status
line."""
EXCHANGES, CLIENT_BYTES, SERVER_BYTES = 4, 1024, 16384
KEYSTROKES_MAX: Final = 2
"""Keystrokes a forwarding session may show (a password typed at a prompt inside it); one more ends watching."""
MAX_CHUNKS: Final = 400

_NEWKEYS: Final = 21
_LINE_MAX: Final = 255
_PACKET_MAX: Final = 35000


@dataclass(slots=True)
class _Clear:
    """One side's cleartext: the identification line, then binary packets up to and including NEWKEYS."""

    buffer: bytes = b""
    line_done: bool = False
    done: bool = False

    def read(self, data: bytes) -> bytes | None:
        """Consume cleartext; the bytes after NEWKEYS (encrypted) once it is passed, else b"". None: not SSH."""
        data = self.buffer + data
        self.buffer = b""
        offset = 0
        if not self.line_done:
            end = data.find(b"\n", 0, _LINE_MAX + 2)
            if end < 0:
                if len(data) > _LINE_MAX + 2:
                    return None
                self.buffer = data
                return b""
            if not data.lstrip(b"\r\n").startswith(b"SSH-"):
                return None
            self.line_done, offset = True, end + 1
        while len(data) - offset >= 6:
            length, padding = int.from_bytes(data[offset : offset + 4]), data[offset + 4]
            if not 5 <= length <= _PACKET_MAX or not 4 <= padding < length:
                return None
            if offset + 4 + length > len(data):
                break
            kind = data[offset + 5]
            offset += 4 + length
            if kind == _NEWKEYS:
                self.done = True
                return data[offset:]
        self.buffer = data[offset:]
        return b""


@dataclass(frozen=True, slots=True)
class Chunk:
    from_client: bool
    size: int
    at: float


@dataclass(slots=True)
class SshShape:
    """One SSH connection; `feed` each chunk the relay receives, in order, with its arrival time."""

    client: _Clear = field(default_factory=_Clear)
    server: _Clear = field(default_factory=_Clear)
    chunks: list[Chunk] = field(default_factory=list)
    """Encrypted chunks after authentication."""
    seen: int = 0
    """Encrypted chunks so far, authentication included."""
    keystrokes: int = 0
    done: bool = False

    @property
    def opened(self) -> bool:
        """Either side's identification line was read: the connection speaks SSH."""
        return self.client.line_done or self.server.line_done

    def feed(self, from_client: bool, data: bytes, now: float) -> Finding | None:
        """The finding these bytes completed, if any (once; watching ends with it)."""
        if self.done or not data:
            return None
        side = self.client if from_client else self.server
        if not side.done:
            rest = side.read(data)
            if rest is None:
                self.done = True  # not SSH's framing: nothing here to measure
                return None
            data = rest
        if not data or not (self.client.done and self.server.done):
            return None  # the key exchange is still in the clear (or one side's NEWKEYS is still to come)
        self.seen += 1
        if self.seen <= AUTH_CHUNKS:
            return None
        self.chunks.append(Chunk(from_client, len(data), now))
        return self._judge()

    def _judge(self) -> Finding | None:
        chunks = self.chunks
        last = chunks[-1]
        if not last.from_client and last.size <= ECHO_MAX and len(chunks) >= 2:
            key = chunks[-2]
            previous = next((c for c in reversed(chunks[:-2]) if c.from_client), None)
            if (
                key.from_client
                and key.size <= KEY_MAX
                and last.at - key.at <= ECHO_WITHIN
                and (previous is None or key.at - previous.at >= KEY_GAP)
            ):
                self.keystrokes += 1
                if self.keystrokes > KEYSTROKES_MAX:
                    self.done = True  # interactive: this watcher has nothing more to tell
                    return None
        if len(chunks) >= MAX_CHUNKS:
            self.done = True
        exchanges, client_bytes, server_bytes = _exchanges(chunks)
        if exchanges >= EXCHANGES and client_bytes >= CLIENT_BYTES and server_bytes >= SERVER_BYTES:
            self.done = True
            text = (
                f"SSH after authentication: {exchanges} request/answer exchanges, {client_bytes} B from the client "
                f"and {server_bytes} B from the server in {len(chunks)} chunks, {self.keystrokes} keystrokes"
            )
            return Finding(Category.TUNNEL, PROTOCOL, NAME, evidence(text))
        return None


def _exchanges(chunks: list[Chunk]) -> tuple[int, int, int]:
    """(exchanges, client bytes, server bytes) over the chunks: bursts of one direction, a client burst of at least
    `REQUEST_MIN` followed by a server burst of at least `ANSWER_MIN` counting one exchange."""
    bursts: list[tuple[bool, int]] = []
    for chunk in chunks:
        if bursts and bursts[-1][0] == chunk.from_client:
            bursts[-1] = (chunk.from_client, bursts[-1][1] + chunk.size)
        else:
            bursts.append((chunk.from_client, chunk.size))
    exchanges = sum(
        1
        for (ask_client, asked), (answer_client, answered) in itertools.pairwise(bursts)
        if ask_client and not answer_client and asked >= REQUEST_MIN and answered >= ANSWER_MIN
    )
    client = sum(size for from_client, size in bursts if from_client)
    return exchanges, client, sum(size for _, size in bursts) - client
