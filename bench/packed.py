"""What `egress.detect.packed` costs and what it finds in benign bytes: every TCP flow of capture files (both
directions, as the engine caps them) and hard negatives (random bytes, compressed files, images, executables),
each cut in flows of `packed.LIMIT` bytes.

Prints, per source: flows, MiB, the flows at or over the threshold (must be none), the names found at all (chance
hits: each counts `packed.CHANCE_BITS` less than its bits), the highest surprise of a flow, and the CPU seconds per
MiB of the search (`packed.search` over each direction at once, and fed as the engine feeds it, 1,460 bytes at a
time); for random bytes also the chance hits the model predicts (``2 ** (n - bits)`` a pattern of ``bits`` at
``n`` bit offsets).

    python bench/packed.py ../shared/corpus/benign ../shared/corpus-tunnels/benign
"""

from __future__ import annotations

import argparse
import collections
import gzip
import os
import pathlib
import sys
import time
from collections.abc import Iterable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from host_openings import scan_captures

from egress.detect import packed
from egress.detect.base import MORE, FlowMeta, FlowView, Result, Transport
from egress.detect.engine import FlowInspector

SEGMENT = 1460
META = FlowMeta(Transport.TCP, "192.0.2.1", 40000, "198.51.100.7", 8080)


class Collect:
    """A detector that only looks: keeps each TCP flow's two directions once the flow is decided."""

    def __init__(self) -> None:
        self.flows: list[tuple[bytes, bytes]] = []
        self.path = ""

    def __call__(self, view: FlowView) -> Result:
        if not view.complete:
            return MORE
        if view.client or view.server:
            self.flows.append((view.client, view.server))
        return None


def _fed(client: bytes, server: bytes) -> None:
    inspector = FlowInspector(META, (packed.detect,), stream_cap=packed.LIMIT)
    for at in range(0, max(len(client), len(server)), SEGMENT):
        inspector.feed_stream(True, client[at : at + SEGMENT])
        inspector.feed_stream(False, server[at : at + SEGMENT])
    inspector.close()


def judge(label: str, flows: list[tuple[bytes, bytes]]) -> int:
    """Print one source's line; the flows at or over the threshold."""
    size = sum(len(c) + len(s) for c, s in flows)
    names: collections.Counter[bytes] = collections.Counter()
    over, top = 0, 0
    start = time.process_time()
    for client, server in flows:
        found = packed.search(client[: packed.LIMIT]) | packed.search(server[: packed.LIMIT])
        score = packed.surprise(found)
        names.update(name for name, bits in found.items() if bits >= packed.MIN_BITS)
        top = max(top, score)
        over += score >= packed.THRESHOLD
    once = time.process_time() - start
    start = time.process_time()
    for client, server in flows:
        _fed(client[: packed.LIMIT], server[: packed.LIMIT])
    fed = time.process_time() - start
    mib = size / 2**20
    hits = ", ".join(f"{name.decode()} {count}" for name, count in names.most_common(6)) or "none"
    print(
        f"{label}: {len(flows)} flows, {mib:.2f} MiB; over the threshold {over}; top surprise {top} bits; "
        f"chance hits: {hits}; {once / max(mib, 1e-9) * 1000:.0f} ms/MiB at once, "
        f"{fed / max(mib, 1e-9) * 1000:.0f} ms/MiB fed"
    )
    return over


def _cut(data: bytes) -> list[tuple[bytes, bytes]]:
    return [(data[at : at + packed.LIMIT], b"") for at in range(0, len(data), packed.LIMIT)]


def _files(paths: Iterable[pathlib.Path], budget: int) -> bytes:
    out = bytearray()
    for path in paths:
        if len(out) >= budget:
            break
        try:
            out += path.read_bytes()[: budget - len(out)]
        except OSError:
            continue
    return bytes(out)


def predicted(size: int) -> float:
    """Chance hits of the vocabulary's patterns the model predicts in ``size`` random bytes."""
    offsets = 8 * size
    total = 0.0
    for word in packed.VOCABULARY:
        if 7 * len(word) >= packed.MIN_BITS:
            total += 2 * offsets * 2.0 ** -(7 * len(word))  # most and least significant bit first
    for patterns in packed._DIFFERENCES.values():
        total += sum(offsets * 2.0**-bits for _run, bits in patterns.values())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="*", type=pathlib.Path)
    parser.add_argument("--mib", type=int, default=8, help="MiB of each hard negative")
    args = parser.parse_args()
    over = 0
    if args.roots:
        collect = Collect()
        files = scan_captures(collect, args.roots)
        over += judge(f"captures ({files} files, TCP flows)", collect.flows)
    budget = args.mib * 2**20
    random_bytes = os.urandom(budget)
    over += judge("random", _cut(random_bytes))
    print(f"  predicted chance names in {args.mib} MiB of random bytes: {predicted(budget):.3f}")
    shifted = packed.shifts(random_bytes)
    seen = sum(packed.unpack(shifted, 7, offset).count(b"job") for offset in range(7))
    print(
        f"  the model's check, 7-bit 'job' (21 bits) at every offset: {seen} found, {8 * budget / 2**21:.0f} predicted"
    )
    stdlib = sorted(pathlib.Path(os.__file__).parent.rglob("*.py"))
    over += judge("gzip of Python's library", _cut(gzip.compress(_files(stdlib, budget * 3))[:budget]))
    images = sorted(p for ext in ("*.png", "*.jpg", "*.gif") for p in pathlib.Path("/usr/share").rglob(ext))
    over += judge("images under /usr/share", _cut(_files(images, budget)))
    binaries = sorted(pathlib.Path("/usr/bin").iterdir())
    over += judge("executables in /usr/bin", _cut(_files(binaries, budget)))
    print(f"flows at or over the threshold: {over}")


if __name__ == "__main__":
    main()
