"""What a host rule's default ``expect`` ([tls, http]; red team 6) refuses among capture files' TCP flows: each flow's
first speaker's opening judged as the gateway's gate judges a raw stream to a host rule's port
(`egress.proxy.gate._expected` on `egress.detect.encrypted.opening`) at its first bytes (the gate's early look,
from the first segment on) and on its first 1,024 bytes (the relay's `encrypted.detect`). Before the change a host
rule's raw stream was held to nothing at its opening; from it, an opening that is fully encrypted or SSH is refused
(``tunnel``) unless the rule names ``any`` or ``ssh``. Prints each refused flow and the totals per opening.

    python bench/host_openings.py ../shared/corpus/benign ../shared/corpus-tunnels/benign
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import sys
from typing import Protocol

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from egress.detect import encrypted
from egress.detect.base import MORE, FlowView, Result
from egress.detect.registry import DetectorSet, _NoDns
from egress.scanner import FileStats, Scanner

REFUSED = (encrypted.Opening.ENCRYPTED, encrypted.Opening.SSH)
"""What the default ``expect`` refuses at a raw stream's opening (plain openings go to the detectors)."""


class Looker(Protocol):
    """A detector that only looks, told the name of the capture it reads."""

    path: str

    def __call__(self, view: FlowView) -> Result: ...


class Judge:
    """A detector that only looks: per TCP flow, the opening at the first look and on the whole window."""

    def __init__(self) -> None:
        self.early: dict[int, encrypted.Opening] = {}
        self.seen: list[tuple[str, encrypted.Opening | None, encrypted.Opening | None, int]] = []
        self.path = ""

    def __call__(self, view: FlowView) -> Result:
        data = view.client or view.server
        if not data:
            return None if view.complete else MORE
        key = id(view)
        if key not in self.early:
            seen = encrypted.opening(data, ended=view.complete)
            if seen is None:
                return MORE
            self.early[key] = seen
        full = view.complete or len(data) >= encrypted.WINDOW
        if not full:
            return MORE
        whole = encrypted.opening(data, ended=True)
        meta = view.meta
        side = "client" if view.client else "server"
        where = f"{self.path} {meta.src}:{meta.sport} -> {meta.dst}:{meta.dport} ({side})"
        self.seen.append((where, self.early.pop(key), whole, len(data)))
        return None


def scan_captures(judge: Looker, roots: list[pathlib.Path]) -> int:
    """Every capture file under ``roots`` scanned with ``judge`` as the only detector, its ``path`` set to the file's
    name while that file is read (bench/http_openings.py walks the corpora the same way); how many files."""
    detectors = DetectorSet((judge,), (), (), _NoDns)
    files = sorted(p for root in roots for p in (root.rglob("*") if root.is_dir() else [root]) if p.is_file())
    files = [p for p in files if p.suffix in (".pcap", ".pcapng", ".cap")]
    for path in files:
        judge.path = path.name
        for _ in Scanner(detectors).scan(str(path), FileStats(str(path))):
            pass
    return len(files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", type=pathlib.Path)
    args = parser.parse_args()
    judge = Judge()
    files = scan_captures(judge, args.roots)
    totals: collections.Counter[str] = collections.Counter()
    refused = 0
    for where, early, whole, size in judge.seen:
        totals[f"{early}/{whole}"] += 1
        if early in REFUSED or whole in REFUSED:
            refused += 1
            print(f"refused: {where}: first look {early}, window {whole}, {size} B")
    print(f"{files} files, {len(judge.seen)} TCP flows with bytes; refused by the default expect: {refused}")
    for key, count in sorted(totals.items()):
        print(f"  {key}: {count}")


if __name__ == "__main__":
    main()
