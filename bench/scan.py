"""Scanner benchmark: `egress scan` beside nDPI's `ndpiReader` and nfstream on the same captures, in one run.

Builds the capture from the public corpus (looped, addresses shifted per loop; see build_capture.py) at each
requested size, and its two halves as two files for the two-core rows: ndpiReader ignores ``-n`` for one pcap,
and ndpiReader 4.2 given ``-i a,b -n 2`` reads the first file only (191,240 of the 110 MB loop's 382,480
packets, the CPU of one half), so its two-core row is two ndpiReader processes side by side, one per file,
beside ``egress scan --jobs 2 a b``. On the one file, ``egress scan --jobs 2`` splits it by flow over two
processes (egress.scan_split), beside ndpiReader's best configuration for one pcap, which is one thread (it ignores
``-n`` for a single pcap input). Each tool runs as child processes; wall time (to the last one's end) and CPU
time (summed, the children's children included) come from wait4; peak RSS is the largest process's (wait4) and
the sum over the tool's processes of each one's peak (VmHWM, sampled from /proc every 20 ms while they run, so
the spawned workers of a split scan count too). Rounds are interleaved (every
tool once, then again) so that the load of the shared machine falls on all alike; the median of the rounds is
reported. CPU seconds per million packets is the stable figure on a shared machine; wall-clock rates move ±30 %.

    python bench/scan.py --corpus ../shared/corpus --sizes 110,220
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import BinaryIO

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.build_capture import build  # noqa: E402
from egress.capture.reader import read_records  # noqa: E402

NFSTREAM_PYTHON = pathlib.Path("/work/nfstream-venv/bin/python")
NFSTREAM = "import sys, nfstream; sum(1 for _ in nfstream.NFStreamer(source=sys.argv[1]))"


@dataclass(frozen=True, slots=True)
class Run:
    seconds: float
    cpu: float
    rss_kib: int
    code: int
    rss_sum_kib: int = 0
    """The sum over the processes of each one's peak RSS (VmHWM), sampled."""


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants alive now (/proc/PID/task/TID/children)."""
    found, queue = [], [pid]
    while queue:
        each = queue.pop()
        found.append(each)
        try:
            for task in os.listdir(f"/proc/{each}/task"):
                with open(f"/proc/{each}/task/{task}/children") as handle:
                    queue.extend(int(child) for child in handle.read().split())
        except OSError:
            continue  # gone
    return found


def _peak_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run(commands: list[list[str]], env: dict[str, str] | None = None) -> Run:
    """Wall seconds until the last of ``commands`` (started together) ends, their CPU seconds (user + system)
    summed, the largest peak RSS in KiB, the worst exit status, and the sum of every process's peak RSS."""
    start = time.perf_counter()
    children = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env) for c in commands]
    cpu, rss, code = 0.0, 0, 0
    peaks: dict[int, int] = {}
    waiting = {child.pid for child in children}
    while waiting:
        for pid in list(waiting):
            for each in _tree(pid):
                peaks[each] = max(peaks.get(each, 0), _peak_kib(each))
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                waiting.discard(pid)
                cpu += usage.ru_utime + usage.ru_stime
                rss, code = max(rss, usage.ru_maxrss), max(code, abs(os.waitstatus_to_exitcode(status)))
                peaks[pid] = max(peaks.get(pid, 0), usage.ru_maxrss)
        if waiting:
            time.sleep(0.02)
    return Run(time.perf_counter() - start, cpu, rss, code, sum(peaks.values()))


def median(runs: list[Run]) -> Run:
    return Run(
        statistics.median(r.seconds for r in runs),
        statistics.median(r.cpu for r in runs),
        int(statistics.median(r.rss_kib for r in runs)),
        max(r.code for r in runs),
        int(statistics.median(r.rss_sum_kib for r in runs)),
    )


def halves(capture: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """The capture's first and second half of its records, as two classic pcap files.

    Streamed through a small buffer, never read whole: a child's peak RSS as wait4 reports it includes this
    process's peak (Linux carries the parent's high-water mark through fork/vfork and exec), so a bench that held
    the capture in memory reported its own size as every tool's peak RSS."""
    first, second = capture.with_suffix(".part1.pcap"), capture.with_suffix(".part2.pcap")
    if first.exists() and second.exists():
        return first, second
    with capture.open("rb") as source:
        header = source.read(24)
        count = 0
        while len(record := source.read(16)) == 16:
            source.seek(struct.unpack_from("<I", record, 8)[0], os.SEEK_CUR)
            count += 1
        source.seek(24)
        for _ in range(count // 2):
            record = source.read(16)
            source.seek(struct.unpack_from("<I", record, 8)[0], os.SEEK_CUR)
        middle = source.tell()
        source.seek(0)
        with first.open("wb") as out:
            _copy(source, out, middle)
        with second.open("wb") as out:
            out.write(header)
            _copy(source, out, capture.stat().st_size - middle)
    return first, second


def _copy(source: BinaryIO, out: BinaryIO, length: int) -> None:
    while length > 0:
        block = source.read(min(length, 1 << 20))
        if not block:
            return
        out.write(block)
        length -= len(block)


def tools(
    egress: str, ndpi: str | None, files: list[pathlib.Path]
) -> dict[str, tuple[list[list[str]], dict[str, str]]]:
    """What to run on ``files`` (one capture, or the two halves): name → (commands run together, environment)."""
    names = [str(path) for path in files]
    jobs = str(len(files))
    pure = {**os.environ, "EGRESS_SCAN_PURE": "1"}
    chosen = {
        f"egress scan --jobs {jobs}": ([[egress, "scan", "--json", "--no-progress", "--jobs", jobs, *names]], {}),
        f"egress scan --jobs {jobs} (pure Python)": (
            [[egress, "scan", "--json", "--no-progress", "--jobs", jobs, *names]],
            pure,
        ),
    }
    if len(names) == 1:  # the one file split by flow over two processes (egress.scan_split)
        chosen["egress scan --jobs 2 (split by flow)"] = (
            [[egress, "scan", "--json", "--no-progress", "--jobs", "2", *names]],
            {},
        )
    if ndpi:
        label = "ndpiReader 4.2 (-n: 1 for 1 pcap)" if len(names) == 1 else f"{len(names)} x ndpiReader 4.2, 1 per file"
        chosen[label] = ([[ndpi, "-i", name, "-q", "-v", "0"] for name in names], {})
    if NFSTREAM_PYTHON.exists() and len(files) == 1:
        chosen["nfstream 6.6"] = ([[str(NFSTREAM_PYTHON), "-c", NFSTREAM, names[0]]], {})
    return chosen


def measure(rounds: int, chosen: dict[str, tuple[list[list[str]], dict[str, str]]]) -> dict[str, Run]:
    results: dict[str, list[Run]] = {name: [] for name in chosen}
    for _ in range(rounds):
        for name, (commands, env) in chosen.items():
            done = run(commands, env or None)
            results[name].append(done)
            figures = (
                f"{done.seconds:.2f} s wall, {done.cpu:.2f} s CPU, {done.rss_kib / 1024:.0f} MB "
                f"({done.rss_sum_kib / 1024:.0f} MB over its processes), exit {done.code}"
            )
            print(f"  {name}: {figures} (load {os.getloadavg()[0]:.1f})", flush=True)
    return {name: median(runs) for name, runs in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=pathlib.Path, default=pathlib.Path("../shared/corpus"))
    parser.add_argument("--sizes", default="110,220", help="capture sizes in MB, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="runs per tool (interleaved); the median is reported")
    parser.add_argument("--egress", help="the egress command (default: the one beside this Python)")
    args = parser.parse_args()

    egress = args.egress or shutil.which("egress", path=str(pathlib.Path(sys.executable).parent)) or "egress"
    # An installed egress has its bytecode compiled (pip does it); a source tree under PYTHONDONTWRITEBYTECODE
    # would compile every module at each start (~0.2 s of CPU a run) and measure that instead.
    writable = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(HERE.parent / "egress")], env=writable, check=False)
    ndpi = shutil.which("ndpiReader")
    version = subprocess.run([egress, "scan", "--version"], capture_output=True, text=True, check=False).stdout
    print(f"egress: {egress} ({version.strip()})")
    print(f"ndpiReader: {ndpi or 'not installed (apt-get install libndpi-bin)'}")
    print(f"nfstream: {NFSTREAM_PYTHON if NFSTREAM_PYTHON.exists() else 'not installed'}")
    print(f"load average at start: {os.getloadavg()[0]:.2f} (on {os.cpu_count()} CPUs)")
    rows: list[tuple[str, str, float, float, float, float, float, float, int]] = []
    pairs: list[tuple[str, str, str, Run, str, Run, int]] = []
    for size in (int(part) for part in args.sizes.split(",")):
        capture = HERE / "out" / f"corpus-loop-{size}mb.pcap"
        if not capture.exists():
            build(args.corpus, size, capture)
        megabytes = capture.stat().st_size / 1e6
        packets = sum(len(records) for records in read_records(str(capture)))
        print(f"capture {capture.name}: {packets} packets, {megabytes:.1f} MB")
        for files in ([capture], list(halves(capture))):
            label = f"{size} MB" + (" in 2 files" if len(files) > 1 else "")
            results = measure(args.rounds, tools(egress, ndpi, files))
            for name, result in results.items():
                rate = packets / result.seconds
                cpu_per_million = result.cpu / packets * 1e6
                mbps, rss, rss_sum = megabytes / result.seconds, result.rss_kib / 1024, result.rss_sum_kib / 1024
                rows.append((label, name, rate, mbps, cpu_per_million, result.cpu, rss, rss_sum, result.code))
            for ours in (name for name in results if name.startswith("egress") and "pure" not in name):
                for peer in results:
                    if not peer.startswith("egress"):
                        pairs.append((label, ours, peer, results[ours], peer, results[peer], packets))
            print(f"  {label}: done at load {os.getloadavg()[0]:.2f}")

    head = ("capture", "tool", "packets/s", "MB/s", "CPU s/Mpkt", "CPU s", "peak RSS MB", "RSS sum MB", "exit")
    print("\n{:<16} {:<36} {:>11} {:>7} {:>11} {:>7} {:>12} {:>11} {:>5}".format(*head))
    for label, tool, rate, mbps, per_million, cpu, rss, rss_sum, code in rows:
        figures = f"{rate:>11,.0f} {mbps:>7.1f} {per_million:>11.2f} {cpu:>7.2f} {rss:>12.1f} {rss_sum:>11.1f}"
        figures += f" {code:>5}"
        print(f"{label:<16} {tool:<36} {figures}")

    print("\n| measure | egress | peer | ratio (packets/s; CPU per packet, peer/egress: >1 is egress better) |")
    print("|---|---|---|---|")
    for label, ours, peer, mine, _, theirs, packets in pairs:
        rate_ratio = theirs.seconds / mine.seconds
        cpu_ratio = theirs.cpu / mine.cpu if mine.cpu else 0.0
        egress_cell = (
            f"{packets / mine.seconds / 1e3:,.0f}k packets/s, {mine.cpu / packets * 1e6:.2f} CPU s/Mpkt, "
            f"{mine.rss_sum_kib / 1024:.0f} MB (RSS sum)"
        )
        peer_cell = (
            f"{peer}: {packets / theirs.seconds / 1e3:,.0f}k, {theirs.cpu / packets * 1e6:.2f} CPU s/Mpkt, "
            f"{theirs.rss_sum_kib / 1024:.0f} MB"
        )
        print(f"| `{ours}`, {label} | {egress_cell} | {peer_cell} | {rate_ratio:.2f}; CPU {cpu_ratio:.2f} |")


if __name__ == "__main__":
    main()
