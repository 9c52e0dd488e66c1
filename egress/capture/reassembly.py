"""In-order delivery of one TCP direction: retransmissions trimmed, reordered segments held, gaps bounded."""

from __future__ import annotations

from typing import Final

MAX_HELD_SEGMENTS: Final = 64
"""Out-of-order segments held per direction before we give up on the gap and skip to what we have."""

_MASK: Final = 0xFFFFFFFF


def _ahead(seq: int, of: int) -> int:
    """Signed distance from ``of`` to ``seq`` in 32-bit sequence space."""
    delta = (seq - of) & _MASK
    return delta - (1 << 32) if delta & 0x80000000 else delta


class TcpStream:
    """One direction of a TCP connection. `add` returns the bytes that became contiguous."""

    __slots__ = ("_held", "_next")

    def __init__(self) -> None:
        self._next: int | None = None
        self._held: dict[int, bytes] = {}

    def syn(self, seq: int) -> None:
        """A SYN fixes the initial sequence number: data starts at ``seq + 1``."""
        if self._next is None:
            self._next = (seq + 1) & _MASK

    def add(self, seq: int, data: bytes) -> bytes:
        if not data:
            return b""
        if self._next is None:  # capture started mid-connection
            self._next = seq
        distance = _ahead(seq, self._next)
        if distance < 0:  # retransmission, possibly overlapping new data
            if -distance >= len(data):
                return b""
            data = data[-distance:]
            seq = self._next
            distance = 0
        if distance > 0:
            kept = self._held.get(seq)
            if kept is None or len(kept) < len(data):
                self._held[seq] = data
            if len(self._held) <= MAX_HELD_SEGMENTS:
                return b""
            # Too much held behind a gap that never filled (capture loss): skip to the earliest held byte.
            current = self._next
            self._next = min(self._held, key=lambda held: _ahead(held, current))
            return self._drain()
        self._next = (seq + len(data)) & _MASK
        if not self._held:
            return data
        return data + self._drain()

    def _drain(self) -> bytes:
        out = bytearray()
        progressed = True
        while self._held and progressed:
            progressed = False
            for seq in list(self._held):
                assert self._next is not None
                distance = _ahead(seq, self._next)
                if distance > 0:
                    continue
                chunk = self._held.pop(seq)
                if -distance < len(chunk):
                    out += chunk[-distance:]
                    self._next = (self._next + len(chunk) + distance) & _MASK
                progressed = True
        return bytes(out)
