"""Holding back a partial message: which of a direction's bytes an inspected relay may forward now.

The detectors judge a JSON-RPC message (Stratum and the other pool protocols, `egress.detect.jsonrpc`) once it is
whole, so a relay that forwarded each segment as it came let the bytes of a mining message before its end reach
the pool (issue 9: 63 of a 64-byte subscribe in 1-byte segments). `Holdback` keeps back the value that is still
open: from the ``{`` or ``[`` where a lenient JSON reader would start a value (junk before it is skipped, as the
reader does) until its braces and brackets close outside strings. Bytes outside an open value (junk, whole
messages, binary) are forwarded at once, so line and binary protocols are not delayed.

Bounds, because a client that sends part of a message and waits for an answer would otherwise stall:

- *Time*: held bytes go out once no byte has come for `HOLD_FOR` (the value stopped growing). A client never waits
  on a partial JSON value (the server cannot act on it), so this is reached only by binary that happens to contain
  an unbalanced ``{``, or by an attacker who pauses inside a message: those bytes then cross, never the byte that
  closes a message, which the detectors judge first. The clock restarts with each byte, not at the oldest held
  one: a message sent a byte at a time on a slow or loaded machine took more than `HOLD_FOR` to arrive whole, and
  its first 207 bytes (a batch's subscribe and authorize, all but the closing bracket) reached the pool.
- *Not JSON*: a byte that cannot be in JSON text (a control character other than tab, CR and LF) ends the open
  value: binary protocols reset the hold within a few bytes. NULs are skipped, since the lenient reader drops them
  (UTF-16/32 text). A direction shown to be TLS (a whole hello) or SSH (its banner) is never held: the JSON
  detectors do not read it.
- *Size*: nothing is held once the flow's inspection is decided (the caller stops asking at the engine's cap).

Pure and clock-injected: the layer calls `feed` with each segment and `due` on its wakeups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from egress.detect import tls

HOLD_FOR: Final = 1.0
"""Seconds with no new byte after which the held bytes are forwarded anyway (see the module docstring)."""

_OPEN: Final = frozenset(b"{[")
_CLOSE: Final = frozenset(b"}]")
_NOT_JSON: Final = frozenset(set(range(0x20)) - set(b"\x00\t\r\n") | {0x7F})
"""Bytes no JSON text holds, in a string or out (RFC 8259 §7 and §2): they end an open value. NUL is skipped."""


@dataclass(slots=True)
class _Scan:
    """Where a lenient JSON reader is in one direction: inside an open top-level value or not."""

    depth: int = 0
    in_string: bool = False
    escaped: bool = False
    start: int = -1
    """Offset (in the direction's stream) of the open value's first byte; -1 outside a value."""

    def feed(self, data: bytes, offset: int) -> None:
        index, end = 0, len(data)
        while index < end:
            if not self.depth:  # junk until a value opens: skipped at find() speed
                index = _next_open(data, index)
                if index < 0:
                    return
                self.depth, self.start, self.in_string, self.escaped = 1, offset + index, False, False
            else:
                self._step(data[index])
            index += 1

    def _step(self, byte: int) -> None:
        if byte == 0:
            return
        if byte in _NOT_JSON:
            self.depth, self.start = 0, -1
        elif self.in_string:
            if self.escaped:
                self.escaped = False
            elif byte == 0x5C:  # backslash
                self.escaped = True
            elif byte == 0x22:
                self.in_string = False
        elif byte == 0x22:
            self.in_string = True
        elif byte in _OPEN:
            self.depth += 1
        elif byte in _CLOSE:
            self.depth -= 1
            if not self.depth:
                self.start = -1


def _next_open(data: bytes, index: int) -> int:
    curly, square = data.find(b"{", index), data.find(b"[", index)
    return max(curly, square) if curly < 0 or square < 0 else min(curly, square)


@dataclass(slots=True)
class Holdback:
    """One direction of an inspected stream: `feed` it each segment, forward what it returns."""

    seen: int = 0
    """Bytes of the direction received so far."""
    released: int = 0
    """Bytes of the direction handed back for forwarding."""
    held: bytes = b""
    since: float | None = None
    """When the newest held byte arrived (the time bound counts from it)."""
    exempt: bool = False
    """The direction was shown to be TLS or SSH: nothing is held any more."""
    scan: _Scan | None = None
    head: bytes = b""
    """The direction's first bytes, until they show whether it is TLS or SSH."""

    def feed(self, data: bytes, now: float, deciding: bool = True) -> bytes:
        """Take one segment; the bytes that may be forwarded now (in order, after those returned before).
        ``deciding``: the flow's detectors have not decided yet; once False everything held is released."""
        if not deciding or self.exempt:
            return self._through(data)
        if self.scan is None:
            self.scan = _Scan()
        if len(self.head) < 4096:
            self.head += data[: 4096 - len(self.head)]
            if self.head.startswith(b"SSH-") or (self.head[:1] == b"\x16" and tls.starts_with_hello(self.head)):
                self.exempt = True
                return self._through(data)
        self.scan.feed(data, self.seen)
        self.seen += len(data)
        self.held += data
        keep_from = max(self.scan.start, self.released) if self.scan.start >= 0 else self.seen
        out = self.held[: keep_from - self.released]
        self.held = self.held[len(out) :]
        self.released += len(out)
        self.since = now if self.held else None
        return out

    def _through(self, data: bytes) -> bytes:
        self.seen += len(data)
        self.released += len(data)
        return self.release() + data

    def due(self, now: float) -> float | None:
        """Seconds until the held bytes must go (0: now), or None when nothing is held."""
        if self.since is None or not self.held:
            return None
        return max(0.0, self.since + HOLD_FOR - now)

    def release(self) -> bytes:
        """Everything held, to forward now (the time bound, the end of the direction, or a decided flow)."""
        out, self.held, self.since = self.held, b"", None
        self.released += len(out)
        return out
