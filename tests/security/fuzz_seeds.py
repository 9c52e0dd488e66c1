"""Seed inputs of the coverage-guided fuzz targets (tests/security/fuzz_targets.py), taken from real bytes.

The captures of pcaps/ (every demo attempt and every technique of the security suite, as the gateway's sandbox
side saw them) and the small files of the shared corpus (../shared/corpus: real mining, tunnel and benign
traffic) are cut into what each parser reads: DNS messages (UDP port 53 payloads), the first client bytes of TCP
flows (ClientHellos, HTTP heads, Stratum logins, WebSocket upgrades), whole TCP streams, and the capture files
themselves. The policy seeds are the shipped policies. Seeds are only a start: the fuzzer mutates from there.
"""

from __future__ import annotations

import functools
import pathlib

from egress.capture import packet
from egress.capture.reader import CaptureError, read_frames
from tests.corpus import CORPUS

ROOT = pathlib.Path(__file__).resolve().parents[2]
PCAPS = ROOT / "pcaps"
SMALL = 64 * 1024
"""Capture files at most this big are seeds (and are cut into seeds): a seed the fuzzer runs in milliseconds."""
STREAM_MAX = 16 * 1024
"""A stream seed is cut here, at the engine's inspection cap (`egress.detect.engine.STREAM_CAP`)."""

Flow = tuple[bytes, bytes, int, int]


@functools.cache
def captures() -> tuple[pathlib.Path, ...]:
    """The small capture files of pcaps/ (and pcaps/suite/) and of the shared corpus, sorted by name."""
    found = [*PCAPS.glob("*.pcap"), *PCAPS.glob("suite/*.pcap")]
    if CORPUS.exists():
        found += [p for p in CORPUS.rglob("*") if p.suffix in (".pcap", ".pcapng")]
    return tuple(sorted((p for p in found if p.stat().st_size <= SMALL), key=lambda p: (p.name, str(p))))


@functools.cache
def _segments(path: pathlib.Path) -> tuple[packet.Segment, ...]:
    defrag = packet.Defragmenter()
    out: list[packet.Segment] = []
    try:
        for ts, linktype, frame in read_frames(str(path)):
            try:
                segment = packet.decode(linktype, frame, ts, defrag)
            except packet.Malformed:
                continue
            if segment is not None:
                out.append(segment)
    except CaptureError:
        pass  # a seed file that ends badly still gave its good packets
    return tuple(out)


@functools.cache
def streams() -> tuple[tuple[bytes, bytes], ...]:
    """(client bytes, server bytes) of each TCP flow with payload, in capture order (payloads joined as they come:
    good enough for a seed), each direction cut at `STREAM_MAX`."""
    out: list[tuple[bytes, bytes]] = []
    for path in captures():
        flows: dict[Flow, list[bytearray]] = {}
        for seg in _segments(path):
            if seg.proto != packet.TCP or not seg.payload:
                continue
            forward, backward = (seg.src, seg.dst, seg.sport, seg.dport), (seg.dst, seg.src, seg.dport, seg.sport)
            if backward in flows:
                flows[backward][1] += seg.payload
            else:
                flows.setdefault(forward, [bytearray(), bytearray()])[0] += seg.payload
        out += [(bytes(c[:STREAM_MAX]), bytes(s[:STREAM_MAX])) for c, s in flows.values()]
    return tuple(dict.fromkeys(out))


@functools.cache
def dns_messages() -> tuple[bytes, ...]:
    """Every UDP payload to or from port 53 of the seed captures."""
    found = [
        seg.payload
        for path in captures()
        for seg in _segments(path)
        if seg.proto == packet.UDP and 53 in (seg.sport, seg.dport) and seg.payload
    ]
    return tuple(dict.fromkeys(found))


def first_client_bytes(starting: bytes = b"") -> tuple[bytes, ...]:
    """The client side of each seed stream that starts with ``starting``, cut to its first 4 KiB."""
    return tuple(dict.fromkeys(c[:4096] for c, _ in streams() if c.startswith(starting) and c))


def capture_files() -> tuple[bytes, ...]:
    return tuple(path.read_bytes() for path in captures())


def policies() -> tuple[bytes, ...]:
    return tuple(path.read_bytes() for path in sorted((ROOT / "rules").glob("*.yaml")))
