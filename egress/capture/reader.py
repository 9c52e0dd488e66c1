"""Capture files in, link-layer frames out: the one module that imports dpkt.

Reads classic pcap (both byte orders, micro- and nanosecond) and pcapng (any number of sections and
interfaces, per-interface link type and timestamp resolution) whatever the file is called. dpkt parses pcapng's
section headers and interface descriptions, and is imported only when a pcapng file has them (importing dpkt
loads every protocol module it has: about 190 M instructions, 1 % of a 110 MB scan); a classic pcap file header
is a fixed 24-byte struct whose link type is read here. The per-packet record loop is ours, reading 1 MiB
chunks, because constructing a dpkt object per record costs more than the rest of the scanner's per-packet work
(see docs/scanner-hot-path.md). `read_records` hands each chunk over whole, as `egress.capture.hot.Records`
(classic pcap framed by the compiled path where it is built); `read_batches` and `read_frames` make tuples of it.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Final

from egress.capture.hot import Implementation, Records, implementation
from egress.capture.opener import DECOMPRESS_ERRORS, open_capture

CHUNK: Final = 1 << 20
MAX_RECORD: Final = 1 << 24
"""Largest record we accept (pcapng blocks or pcap caplen); a bigger length field means a corrupt file."""

_PCAP_MAGICS: Final = {
    b"\xa1\xb2\xc3\xd4": (">", 1e-6),
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6),
    b"\xa1\xb2\x3c\x4d": (">", 1e-9),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9),
}
_PCAPNG_SHB: Final = b"\x0a\x0d\x0d\x0a"


class CaptureError(Exception):
    """A capture file that cannot be read (further). The message names the file and, where known, the packet."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One captured frame. Not used on the hot path (which takes tuples); handy for tools and tests."""

    ts: float
    linktype: int
    data: bytes


Batch = list[tuple[float, int, bytes]]
"""``(timestamp, linktype, frame)`` for each packet of a stretch of the file."""


def read_frames(path: str) -> Iterator[tuple[float, int, bytes]]:
    """Yield ``(timestamp, linktype, frame)`` for each packet of a pcap or pcapng file (see `read_batches`)."""
    for batch in read_batches(path):
        yield from batch


def read_batches(path: str) -> Iterator[Batch]:
    """Yield the packets of a pcap or pcapng file in batches of about `CHUNK` bytes (see `read_records`)."""
    for records in read_records(path):
        buf, spans, stamps = records.buf, records.spans, records.stamps
        yield [
            (stamps[index], spans[3 * index + 2], buf[spans[3 * index] : spans[3 * index] + spans[3 * index + 1]])
            for index in range(len(stamps))
        ]


def read_records(path: str, hot: Implementation | None = None) -> Iterator[Records]:
    """Yield the packets of a pcap or pcapng file, a chunk of about `CHUNK` bytes at a time.

    Raises `CaptureError` (after yielding every good packet before the fault) for an unreadable, unsupported,
    truncated or corrupt file. Chunks, rather than a generator step per packet, because the scanner's hot loop
    then goes over a chunk's records without making an object of those it skips. ``hot`` chooses the compiled or
    the pure framing (`egress.capture.hot.implementation` when not given).
    """
    hot = hot or implementation()
    try:
        handle = open_capture(path)  # a file or stdin ("-"), decompressed when it is compressed
    except OSError as exc:
        raise CaptureError(f"{path}: cannot open: {exc.strerror or exc}") from None
    try:
        magic = handle.read(4)
        handle.seek(0)
        if magic in _PCAP_MAGICS:
            yield from _read_pcap(path, handle, hot)
        elif magic == _PCAPNG_SHB:
            yield from _read_pcapng(path, handle, hot)
        elif len(magic) < 4:
            raise CaptureError(f"{path}: empty or truncated file header")
        else:
            raise CaptureError(f"{path}: not a pcap or pcapng file (magic {magic.hex()})")
    except DECOMPRESS_ERRORS as exc:
        raise CaptureError(f"{path}: read error: {getattr(exc, 'strerror', None) or exc}") from None
    finally:
        handle.close()


def _read_pcap(path: str, handle: BinaryIO, hot: Implementation) -> Iterator[Records]:
    head = handle.read(24)
    if len(head) < 24:
        raise CaptureError(f"{path}: truncated pcap file header")
    order, scale = _PCAP_MAGICS[head[:4]]
    linktype = pcap_linktype(head, order)
    caplen_at = struct.Struct(order + "I").unpack_from
    buf = b""
    index = 0
    while True:
        more = handle.read(CHUNK)
        buf += more
        pos, spans, stamps = hot.frame_pcap(buf, 0, order == ">", linktype, scale)
        records = Records(buf, array("q", spans), array("d", stamps))
        index += len(records)
        if len(buf) - pos >= 16 and (caplen := caplen_at(buf, pos + 8)[0]) > MAX_RECORD:
            if records:
                yield records
            raise CaptureError(f"{path}: corrupt record at packet {index + 1} (length {caplen})")
        if records:
            yield records
        buf = buf[pos:]
        if not more:
            if buf:
                raise CaptureError(f"{path}: truncated packet {index + 1} ({len(buf)} bytes of a record left)")
            return


@dataclass(slots=True)
class _Interface:
    linktype: int
    scale: float


@dataclass(slots=True)
class _Pcapng:
    """What the block walk carries from one buffer to the next."""

    order: str = "<"
    """The current section's byte order."""
    interfaces: list[_Interface] = field(default_factory=list)
    """The current section's interfaces, by index."""
    packets: int = 0
    """Packets read so far (for messages)."""
    wanted: int = 0
    """Length of a block that did not fit in the buffer: read at least this much next."""


def _read_pcapng(path: str, handle: BinaryIO, hot: Implementation) -> Iterator[Records]:
    """The read loop over blocks; the packets read before a fault are yielded before the fault is raised."""
    state = _Pcapng()
    buf = b""
    while True:
        more = handle.read(max(CHUNK, state.wanted))
        buf += more
        spans: array[int] = array("q")
        stamps: array[float] = array("d")
        try:
            pos = _pcapng_blocks(path, buf, state, spans, stamps, hot)
        finally:
            if stamps:
                yield Records(buf, spans, stamps)
        buf = buf[pos:]
        if not more:
            if len(buf) >= 12:
                raise CaptureError(f"{path}: truncated pcapng block after packet {state.packets}")
            if buf:
                raise CaptureError(f"{path}: truncated block header after packet {state.packets}")
            return


def _pcapng_blocks(
    path: str, buf: bytes, state: _Pcapng, spans: array[int], stamps: array[float], hot: Implementation
) -> int:
    """Read every whole block of ``buf`` (packets into ``spans`` and ``stamps``); the position of the first one
    not whole. Runs of enhanced packet blocks go to the compiled framing where it is built; it stops at any other
    block, and at a corrupt one, which this walk then reads (and reports)."""
    order, interfaces, index = state.order, state.interfaces, state.packets
    state.wanted = 0
    size = len(buf)
    pos = 0
    while size - pos >= 12:
        if buf[pos : pos + 4] == _PCAPNG_SHB:
            # The byte-order magic follows the length; the length itself is in the section's order.
            order = state.order = "<" if buf[pos + 8 : pos + 12] == b"\x4d\x3c\x2b\x1a" else ">"
            interfaces = state.interfaces = []
        btype, blen = struct.unpack_from(order + "II", buf, pos)
        if blen < 12 or blen > MAX_RECORD or blen % 4:
            raise CaptureError(f"{path}: corrupt pcapng block (length {blen}) after packet {index}")
        end = pos + blen
        if end > size:
            state.wanted = blen
            break
        if btype == 6:  # Enhanced Packet Block: this one, and with the compiled framing the run it starts
            before = len(stamps)
            pos = _enhanced_packets(path, buf, pos, blen, order, interfaces, spans, stamps, hot, index)
            index += len(stamps) - before
            continue
        if btype == 3:  # Simple Packet Block: no timestamp, interface 0
            index += 1
            if not interfaces:
                raise CaptureError(f"{path}: packet before any interface description at packet {index}")
            _simple_packet(buf, pos, blen, order, interfaces[0], spans, stamps)
        elif btype == 1:
            interfaces.append(_parse_interface(path, buf[pos:end], order))
        elif btype == 0x0A0D0D0A:
            _check_section(path, buf[pos:end], order)
        pos = end
    state.packets = index
    return pos


def _simple_packet(
    buf: bytes, pos: int, blen: int, order: str, interface: _Interface, spans: array[int], stamps: array[float]
) -> None:
    (wirelen,) = struct.unpack_from(order + "I", buf, pos + 8)
    spans.extend((pos + 12, min(wirelen, blen - 16), interface.linktype))
    stamps.append(0.0)


def _enhanced_packets(
    path: str,
    buf: bytes,
    pos: int,
    blen: int,
    order: str,
    interfaces: list[_Interface],
    spans: array[int],
    stamps: array[float],
    hot: Implementation,
    index: int,
) -> int:
    """The enhanced packet block at ``pos`` into ``spans`` and ``stamps`` (with the compiled framing, the whole
    run of them it starts, up to the first other block or one it leaves to this code); where the next block is."""
    if hot.frame_pcapng is not None:
        linktypes = array("q", [info.linktype for info in interfaces]).tobytes()
        scales = array("d", [info.scale for info in interfaces]).tobytes()
        after, more_spans, more_stamps = hot.frame_pcapng(buf, pos, order == ">", linktypes, scales)
        if after > pos:
            spans.frombytes(more_spans)
            stamps.frombytes(more_stamps)
            return after
    iface, ts_high, ts_low, caplen = struct.unpack_from(order + "IIII", buf, pos + 8)
    if iface >= len(interfaces) or 28 + caplen > blen:
        raise CaptureError(f"{path}: corrupt enhanced packet block at packet {index + 1}")
    info = interfaces[iface]
    spans.extend((pos + 28, caplen, info.linktype))
    stamps.append(((ts_high << 32) | ts_low) * info.scale)
    return pos + blen


def pcap_linktype(head: bytes, order: str) -> int:
    """The link type of a classic pcap file header (its 24 bytes, in byte order ``order``): the header's last
    field, as dpkt's ``pcap.FileHdr`` reads it (tests/capture/test_reader.py holds the two equal), without the
    upper bits, which may carry FCS flags."""
    (linktype,) = struct.unpack_from(order + "I", head, 20)
    return int(linktype) & 0x0FFFFFFF


def _check_section(path: str, block: bytes, order: str) -> None:
    import dpkt.pcapng  # lazily: see the module docstring

    cls = dpkt.pcapng.SectionHeaderBlockLE if order == "<" else dpkt.pcapng.SectionHeaderBlock
    try:
        shb = cls(block)
    except (dpkt.UnpackError, struct.error, ValueError) as exc:
        raise CaptureError(f"{path}: corrupt pcapng section header: {exc}") from None
    if shb.v_major != 1:
        raise CaptureError(f"{path}: unsupported pcapng version {shb.v_major}.{shb.v_minor}")


def _parse_interface(path: str, block: bytes, order: str) -> _Interface:
    import dpkt.pcapng  # lazily: see the module docstring

    cls = dpkt.pcapng.InterfaceDescriptionBlockLE if order == "<" else dpkt.pcapng.InterfaceDescriptionBlock
    try:
        idb = cls(block)
    except (dpkt.UnpackError, struct.error, ValueError) as exc:
        raise CaptureError(f"{path}: corrupt pcapng interface description: {exc}") from None
    scale = 1e-6
    for option in getattr(idb, "opts", []):
        if option.code == dpkt.pcapng.PCAPNG_OPT_IF_TSRESOL and option.data:
            resol = option.data[0]
            scale = 2.0 ** -(resol & 0x7F) if resol & 0x80 else 10.0 ** -(resol & 0x7F)
    return _Interface(int(idb.linktype), scale)
