"""Scanner benchmark: `egress scan` beside nDPI's `ndpiReader` on the same large capture, in one run.

Builds the capture from the public corpus (looped, addresses shifted per loop; see build_capture.py) at each
requested size, then runs each tool as a child process and reads its wall time and peak RSS (wait4). Prints
packets/s, MB/s, peak RSS and the ratio egress/nDPI. Peak RSS at two sizes shows whether memory stays flat as the
capture grows.

    python bench/scan.py --corpus ../shared/corpus --sizes 110,220
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.build_capture import build  # noqa: E402
from egress.capture.reader import read_batches  # noqa: E402


def run(command: list[str]) -> tuple[float, int, int]:
    """Wall seconds, peak RSS in KiB and exit status of one child process."""
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    return time.perf_counter() - start, usage.ru_maxrss, os.waitstatus_to_exitcode(status)


def best_of(repeats: int, command: list[str]) -> tuple[float, int, int]:
    results = [run(command) for _ in range(repeats)]
    return min(results, key=lambda item: item[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=pathlib.Path, default=pathlib.Path("../shared/corpus"))
    parser.add_argument("--sizes", default="110,220", help="capture sizes in MB, comma-separated")
    parser.add_argument("--repeats", type=int, default=3, help="runs per tool; the fastest is reported")
    args = parser.parse_args()

    egress = shutil.which("egress", path=str(pathlib.Path(sys.executable).parent)) or "egress"
    ndpi = shutil.which("ndpiReader")
    print(f"egress: {egress}\nndpiReader: {ndpi or 'not installed (apt-get install libndpi-bin)'}")
    rows = []
    for size in (int(part) for part in args.sizes.split(",")):
        capture = HERE / "out" / f"corpus-loop-{size}mb.pcap"
        if not capture.exists():
            build(args.corpus, size, capture)
        megabytes = capture.stat().st_size / 1e6
        packets = _count_packets(capture)
        tools = [("egress scan", [egress, "scan", "--json", "--no-progress", str(capture)])]
        if ndpi:
            tools.append(("ndpiReader 4.2", [ndpi, "-i", str(capture), "-q", "-v", "0"]))
        measured = {}
        for name, command in tools:
            seconds, rss_kib, code = best_of(args.repeats, command)
            measured[name] = seconds
            rows.append((f"{size} MB", name, packets / seconds, megabytes / seconds, rss_kib / 1024, code))
        if len(measured) == 2:
            ratio = measured["ndpiReader 4.2"] / measured["egress scan"]
            rows.append((f"{size} MB", "ratio egress/nDPI (packets/s)", ratio, 0.0, 0.0, 0))
        print(f"capture {capture.name}: {packets} packets, {megabytes:.1f} MB")
    print(f"\n{'capture':<8} {'tool':<32} {'packets/s':>12} {'MB/s':>8} {'peak RSS MB':>12} {'exit':>5}")
    for capture_name, tool, rate, mbps, rss, code in rows:
        if tool.startswith("ratio"):
            print(f"{capture_name:<8} {tool:<32} {rate:>12.2f}")
        else:
            print(f"{capture_name:<8} {tool:<32} {rate:>12,.0f} {mbps:>8.1f} {rss:>12.1f} {code:>5}")


def _count_packets(capture: pathlib.Path) -> int:
    return sum(len(batch) for batch in read_batches(str(capture)))


if __name__ == "__main__":
    main()
