"""Build a large benchmark capture from the public corpus: every capture looped, addresses shifted per loop.

Each loop rewrites the second byte of every IPv4 address (the third of every IPv6 address) so that flows of
different loops are distinct to any tool, and shifts timestamps so that time keeps moving forward. Frames of
other link types are rewritten to Ethernet so the result is one classic pcap file.

    python bench/build_capture.py --corpus ../shared/corpus --size-mb 110 --out bench/out/corpus-loop.pcap
"""

from __future__ import annotations

import argparse
import pathlib
import struct
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from egress.capture.reader import CaptureError, read_frames

_ETH_IPV4 = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00"
_ETH_IPV6 = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x86\xdd"


def _to_ethernet(linktype: int, frame: bytes) -> bytes | None:
    if linktype == 1:
        return frame
    if linktype == 113 and len(frame) > 16:
        proto = frame[14:16]
        body = frame[16:]
    elif linktype == 276 and len(frame) > 20:
        proto = frame[0:2]
        body = frame[20:]
    elif linktype in (101, 228, 229, 12, 14) and frame:
        proto = b"\x08\x00" if frame[0] >> 4 == 4 else b"\x86\xdd"
        body = frame
    else:
        return None
    return (_ETH_IPV4 if proto == b"\x08\x00" else _ETH_IPV6)[:12] + proto + body


def _shift(frame: bytearray, loop: int) -> None:
    offset = 14
    ethertype = (frame[12] << 8) | frame[13]
    while ethertype in (0x8100, 0x88A8) and len(frame) >= offset + 4:
        ethertype = (frame[offset + 2] << 8) | frame[offset + 3]
        offset += 4
    if ethertype == 0x0800 and len(frame) >= offset + 20:
        for base in (offset + 12, offset + 16):
            frame[base + 1] = (frame[base + 1] + loop) & 0xFF
    elif ethertype == 0x86DD and len(frame) >= offset + 40:
        for base in (offset + 8, offset + 24):
            frame[base + 2] = (frame[base + 2] + loop) & 0xFF


def build(corpus: pathlib.Path, size_mb: int, out: pathlib.Path) -> tuple[int, int]:
    files = sorted(p for p in corpus.rglob("*") if p.suffix in (".pcap", ".pcapng") and "lists" not in p.parts)
    frames: list[tuple[float, int, bytes]] = []
    for path in files:
        try:
            frames.extend(read_frames(str(path)))
        except CaptureError as exc:
            print(f"skipping rest of {exc}", file=sys.stderr)
    out.parent.mkdir(parents=True, exist_ok=True)
    limit = size_mb * 1_000_000
    written = packets = 0
    clock = 1_600_000_000.0
    with out.open("wb") as handle:
        handle.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        loop = 0
        while written < limit:
            loop += 1
            for _ts, linktype, frame in frames:
                eth = _to_ethernet(linktype, frame)
                if eth is None:
                    continue
                shifted = bytearray(eth)
                _shift(shifted, loop)
                clock += 0.0001
                sec = int(clock)
                handle.write(struct.pack("<IIII", sec, int((clock - sec) * 1e6), len(shifted), len(shifted)))
                handle.write(shifted)
                written += 16 + len(shifted)
                packets += 1
    return packets, written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=pathlib.Path, default=pathlib.Path("../shared/corpus"))
    parser.add_argument("--size-mb", type=int, default=110)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("bench/out/corpus-loop.pcap"))
    args = parser.parse_args()
    packets, written = build(args.corpus, args.size_mb, args.out)
    print(f"wrote {args.out}: {packets} packets, {written / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
