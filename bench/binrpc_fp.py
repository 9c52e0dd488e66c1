"""False positives of `egress.detect.binrpc` over files that are not mining: each file cut into flows of 16 KiB
(a client's bytes, whole), every flow given to the detector; prints each hit (file, offset, evidence) and the
totals. binrpc's docstring and docs/security.md quote the figure (shared libraries, executables, a venv's packages).

    python bench/binrpc_fp.py /usr/lib/x86_64-linux-gnu /usr/bin .venv/lib
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from egress.detect import binrpc
from egress.detect.base import Finding, FlowMeta, FlowView, Transport

META = FlowMeta(Transport.TCP, "192.0.2.1", 40000, "198.51.100.7", 80)


def files(roots: list[pathlib.Path]) -> list[pathlib.Path]:
    """Regular files under ``roots`` (symbolic links not followed), each once."""
    seen: set[tuple[int, int]] = set()
    found = []
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                path = pathlib.Path(folder, name)
                try:
                    stat = path.lstat()
                except OSError:
                    continue
                if path.is_symlink() or not path.is_file() or (stat.st_dev, stat.st_ino) in seen:
                    continue
                seen.add((stat.st_dev, stat.st_ino))
                found.append(path)
    return sorted(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", type=pathlib.Path)
    parser.add_argument("--flow", type=int, default=16 * 1024, help="bytes per flow")
    args = parser.parse_args()
    total = flows = hits = 0
    began = time.process_time()
    for path in files(args.roots):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        total += len(data)
        for offset in range(0, len(data), args.flow):
            flows += 1
            found = binrpc.detect(FlowView(META, data[offset : offset + args.flow], complete=True))
            if isinstance(found, Finding):
                hits += 1
                print(f"hit: {path} at {offset}: {found.evidence}", flush=True)
    cpu = time.process_time() - began
    print(f"{total / 1e6:.0f} MB in {flows} flows of {args.flow} bytes: {hits} hits ({cpu:.0f} s CPU)")


if __name__ == "__main__":
    main()
