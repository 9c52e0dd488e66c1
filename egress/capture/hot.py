"""The scanner's hot path, compiled or pure: pcap record framing and the raw-byte skip test, behind one interface.

`egress/capture/_hot.c` is the compiled path, built by setup.py where a C compiler exists; the functions below
are its pure-Python twins, which must give the same answer for every input (tests/capture/test_hot.py compares
both over the whole corpus). `implementation` picks one: the compiled module when it imports and its ABI is this
file's, unless ``EGRESS_SCAN_PURE=1`` asks for the pure one. docs/scanner-hot-path.md has the why.

A chunk of a capture is kept as `Records`: the bytes as read, and per record ``(start, caplen, linktype)`` in
``spans`` and the timestamp in ``stamps``, so that a packet the scanner skips never becomes a Python object.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import struct
from array import array
from dataclasses import dataclass
from types import ModuleType
from typing import Final, Protocol, TypeVar

ABI: Final = 5
"""The compiled module's interface version (``HOT_ABI`` in _hot.c): a module built from another one is stale."""
PURE_ENV: Final = "EGRESS_SCAN_PURE"

_TCP: Final = 6
_UDP: Final = 17
_ICMP: Final = 1
_IP_OR_TAGGED: Final = frozenset({0x0800, 0x86DD, 0x8100, 0x88A8, 0x9100})
"""Ethertypes `egress.capture.packet.decode` reads on: IPv4, IPv6 and the VLAN tags it steps over."""

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Records:
    """The whole records of one chunk of a capture: record ``i`` is ``buf[spans[3i] : spans[3i] + spans[3i+1]]``,
    of link type ``spans[3i+2]``, captured at ``stamps[i]``."""

    buf: bytes
    spans: array[int]
    stamps: array[float]

    def __len__(self) -> int:
        return len(self.stamps)

    def frame(self, index: int) -> bytes:
        start = self.spans[3 * index]
        return self.buf[start : start + self.spans[3 * index + 1]]


class FramePcap(Protocol):
    def __call__(self, buf: bytes, pos: int, big: bool, linktype: int, scale: float, /) -> tuple[int, bytes, bytes]:
        """Every whole pcap record of ``buf`` from ``pos``: (end of the last one, spans, stamps as native bytes)."""


class FramePcapng(Protocol):
    def __call__(self, buf: bytes, pos: int, big: bool, linktypes: bytes, scales: bytes, /) -> tuple[int, bytes, bytes]:
        """The run of whole enhanced packet blocks from ``pos`` (interfaces' link types and scales as native
        arrays): (where the first other block starts, spans, stamps)."""


Spans = array[int]
"""Per record of a chunk: its start, capture length and link type (`Records.spans`)."""
Stamps = array[float]
"""Per record of a chunk: its capture time (`Records.stamps`)."""
Table = dict[bytes, object]
"""A flow table as the scanner keeps it: raw key -> flow, or the `DONE` marker of a decided one."""
IcmpTable = Table | None
"""The ICMP flow table, or None: the rules without it (`sweep`)."""
_Answer_co = TypeVar("_Answer_co", covariant=True)


class OverRecords(Protocol[_Answer_co]):
    """The signature `sweep` and `step` share (and their compiled twins): the records of a chunk from ``index`` on,
    the TCP, UDP and (or None) ICMP tables, and the marker of a decided flow."""

    def __call__(
        self,
        buf: bytes,
        spans: Spans,
        stamps: Stamps,
        index: int,
        tcp: Table,
        udp: Table,
        done: object,
        icmp: IcmpTable = None,
        /,
    ) -> _Answer_co: ...


Sweep = OverRecords[int]
"""`sweep`: the index of the first record from ``index`` on that the slow path must see."""


def frame_pcap(buf: bytes, pos: int, big: bool, linktype: int, scale: float) -> tuple[int, bytes, bytes]:
    """Pure twin of _hot.frame_pcap: the spans and stamps of each whole classic-pcap record from ``pos``."""
    header = struct.Struct(">III" if big else "<III").unpack_from
    spans: array[int] = array("q")
    stamps: array[float] = array("d")
    size = len(buf)
    while pos + 16 <= size:
        sec, frac, caplen = header(buf, pos)
        end = pos + 16 + caplen
        if end > size:
            break
        spans.extend((pos + 16, caplen, linktype))
        stamps.append(sec + frac * scale)
        pos = end
    return pos, spans.tobytes(), stamps.tobytes()


def sweep(
    buf: bytes, spans: Spans, stamps: Stamps, index: int, tcp: Table, udp: Table, done: object, icmp: IcmpTable = None
) -> int:
    """Pure twin of _hot.sweep. From record ``index`` on, pass over each record the scanner skips on its raw bytes
    and return the index of the first one the slow path must see, or the record count. Only the common frame
    (Ethernet, IPv4 without options or fragments, TCP or UDP) is judged raw: its flow key is simply
    ``frame[26:38]``. It is skipped when its flow is decided (``done`` in ``tcp``/``udp``), unless it is a SYN
    (port reuse starts a new flow), and when it is a bare ACK of a flow being inspected (nothing to reassemble).

    Given the ICMP table (``icmp``; None keeps to the rules above, as a split scan's worker does for a record at
    or after the rotation time), two more kinds are skipped, each a frame the slow path would drop without a
    trace: an Ethernet frame that carries no IP
    (ARP, LLDP, 802.3 lengths...: `egress.capture.packet.decode` says None; VLAN tags are not looked into),
    and a plain IPv4 ICMP frame (whole 8-byte header) of a decided flow, whose key is the addresses and the
    identifier twice (`decode`'s ports for ICMP). Nothing else may be skipped here: a packet that reaches the
    slow path may start a table generation there."""
    count = len(stamps)
    while index < count:
        at = 3 * index
        start, length = spans[at], spans[at + 1]
        if spans[at + 2] != 1 or start < 0 or length < 0 or start + length > len(buf):
            return index
        frame = buf[start : start + min(length, 54)]
        if not (
            length >= 54
            and frame[14] == 0x45
            and frame[12] == 8
            and frame[13] == 0
            and not frame[20] & 0x3F
            and not frame[21]
            and (frame[23] == _TCP or frame[23] == _UDP)
        ):
            if icmp is None or not _dropped(frame, length, icmp, done):
                return index
            index += 1
            continue
        key = frame[26:38]
        if frame[23] == _TCP:
            entry = tcp.get(key)
            if entry is done:
                if frame[47] & 0x12 == 0x02:  # a SYN without ACK reuses a decided flow's ports
                    return index
            elif entry is None or frame[47] & 0x07 or ((frame[16] << 8) | frame[17]) != 20 + ((frame[46] >> 4) << 2):
                return index
        elif udp.get(key) is not done:
            return index
        index += 1
    return index


def _dropped(frame: bytes, length: int, icmp: Table, done: object) -> bool:
    """`sweep`'s test of a frame other than the common TCP or UDP one (``frame``: its first 54 bytes at most, of
    ``length``): one without IP, or a plain IPv4 ICMP frame of a decided flow."""
    if length < 14 or frame[12] != 8 or frame[13] != 0:
        return ((frame[12] << 8) | frame[13] if length >= 14 else 0) not in _IP_OR_TAGGED
    return (
        length >= 42
        and frame[14] == 0x45
        and not frame[20] & 0x3F
        and not frame[21]
        and frame[23] == _ICMP
        and ((frame[16] << 8) | frame[17]) >= 28
        and icmp.get(frame[26:34] + frame[38:40] + frame[38:40]) is done
    )


Fields = tuple[int, bytes, bytes, int, int, bytes, int, int]
"""A segment as `egress.capture.packet.Segment` holds it: proto, src, dst, sport, dport, payload, flags, seq."""


class SegmentOf(Protocol):
    def __call__(self, frame: bytes, /) -> Fields | None:
        """See `segment`."""


def segment(frame: bytes) -> Fields | None:
    """Pure twin of _hot.segment: `egress.capture.packet.decode`'s TCP or UDP segment of an Ethernet frame (no VLAN
    tag) carrying unfragmented IPv4 whose headers are whole and consistent; None for every other frame, which the
    caller decodes in full (and which raises there when malformed). The scanner's pure path calls `decode`
    directly; this twin is what tests/capture/test_hot.py holds the compiled one to, and it to `decode`."""
    if len(frame) < 34 or frame[12] != 8 or frame[13] != 0 or frame[14] >> 4 != 4:
        return None
    ihl, total, proto = (frame[14] & 0x0F) * 4, (frame[16] << 8) | frame[17], frame[23]
    if ihl < 20 or total < ihl or ((frame[20] << 8) | frame[21]) & 0x3FFF or proto not in (6, 17):
        return None
    body = frame[14 + ihl : min(14 + total, len(frame))]
    if len(body) < (20 if proto == 6 else 8) or (proto == 6 and body[12] >> 4 < 5):
        return None
    src, dst, sport, dport = frame[26:30], frame[30:34], (body[0] << 8) | body[1], (body[2] << 8) | body[3]
    if proto == 6:
        return 6, src, dst, sport, dport, body[(body[12] >> 4) * 4 :], body[13], int.from_bytes(body[4:8])
    length = (body[4] << 8) | body[5]
    return 17, src, dst, sport, dport, body[8:length] if length >= 8 else body[8:], 0, 0


Stepped = tuple[int, Fields, bytes, bytes, object]
"""`step`'s answer at a common frame: its index, its segment, its flow key, the reverse key, the key's entry."""


Step = OverRecords["int | Stepped"]
"""`step`: `sweep`, and the segment of the record it stops at."""


def step(
    buf: bytes, spans: Spans, stamps: Stamps, index: int, tcp: Table, udp: Table, done: object, icmp: IcmpTable = None
) -> int | Stepped:
    """Pure twin of _hot.step: `sweep` from ``index``; where the record it stops at is an Ethernet frame that
    `segment` reads, that record as the scanner's slow path starts on it: (its index, its `segment`, its flow key
    ``src + dst + sport + dport`` (the ports as two big-endian 16-bit numbers), the other direction's key, the
    key's entry in ``tcp`` or ``udp`` or None). Otherwise the index alone (the record count past the last one).
    The compiled one spares the scanner a slice, three calls and the keys' joins per slow-path packet; the
    scanner's pure path keeps to `sweep` and `decode`, and tests/capture/test_hot.py holds the two `step` equal."""
    index = sweep(buf, spans, stamps, index, tcp, udp, done, icmp)
    if index >= len(stamps) or index >= len(spans) // 3 or spans[3 * index + 2] != 1:
        return index
    start, length = spans[3 * index], spans[3 * index + 1]
    if start < 0 or length < 0 or start + length > len(buf):
        return index
    fields = segment(buf[start : start + length])
    if fields is None:
        return index
    proto, src, dst, sport, dport = fields[:5]
    ports, back = struct.pack(">HH", sport, dport), struct.pack(">HH", dport, sport)
    key = src + dst + ports
    return index, fields, key, dst + src + back, (tcp if proto == _TCP else udp).get(key)


@dataclass(frozen=True, slots=True)
class Implementation:
    name: str
    """``compiled`` or ``pure``: what `egress scan --version` and the scan's log line say."""
    frame_pcap: FramePcap
    sweep: Sweep
    frame_pcapng: FramePcapng | None
    """``None`` for the pure path, whose pcapng framing is reader.py's block walk."""
    segment: SegmentOf | None = None
    """The common slow-path frame's segment before the full decode; ``None`` for the pure path, which decodes
    every frame with `egress.capture.packet.decode`."""
    step: Step | None = None
    """`sweep` and the segment of the record it stops at in one call (`step`); ``None`` for the pure path."""


PURE: Final = Implementation("pure", frame_pcap, sweep, None)


def _stale(module: object) -> str | None:
    """Why the compiled module must not run, if it must not: built for another ABI, or (in a source tree, where
    _hot.c sits beside it) from another version of _hot.c than the one there now."""
    if getattr(module, "ABI", None) != ABI:
        return f"built for ABI {getattr(module, 'ABI', None)}, this egress wants {ABI}"
    source = pathlib.Path(__file__).with_name("_hot.c")
    try:
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
    except OSError:  # an installed wheel carries no source: nothing to compare with
        return None
    if getattr(module, "SOURCE", None) != digest:
        return f"built from another version of {source} (run deploy/bootstrap.sh or pip install -e . again)"
    return None


def _compiled() -> tuple[Implementation | None, str | None]:
    """The compiled path (or None) and, when a build is there but must not run, why."""
    try:
        from egress.capture import _hot  # type: ignore[attr-defined]
    except ImportError:
        return None, None
    module: ModuleType = _hot
    why = _stale(module)
    if why is not None:
        return None, why
    compiled = Implementation(
        "compiled", module.frame_pcap, module.sweep, module.frame_pcapng, module.segment, module.step
    )
    return compiled, None


_BUILT: Final = _compiled()
COMPILED: Final = _BUILT[0]
"""The compiled path, or ``None`` where it was not built (no C compiler) or is stale."""
STALE: Final = _BUILT[1]
"""Why a compiled build that is there must not run (``None``: none there, or it runs).

The warning about a stale build waits for the first `implementation` call: at import the command has not yet set
up its logging (``--log-format json``), so a warning then would reach stderr as plain text."""
_warned: list[bool] = [False]


def pure_asked() -> bool:
    """Whether the environment asks for the pure path (``EGRESS_SCAN_PURE=1``)."""
    return os.environ.get(PURE_ENV, "") in ("1", "true", "yes")


def implementation(compiled: bool | None = None) -> Implementation:
    """The compiled path when it exists, unless ``compiled`` is False or ``EGRESS_SCAN_PURE=1``; True insists."""
    if compiled is False or (compiled is None and pure_asked()):
        return PURE
    if COMPILED is None:
        if STALE is not None and not _warned[0]:
            _warned[0] = True
            log.warning("egress.capture._hot is stale (%s): the pure path runs", STALE)
        if compiled:
            raise RuntimeError("the compiled scan path was asked for, but egress.capture._hot is not built")
        return PURE
    return COMPILED
