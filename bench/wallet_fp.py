"""False positives and cost of `egress.detect.wallet` over files that are not mining: each file cut into flows of
16 KiB (a client's bytes, whole), every flow given to the detector, as bench/binrpc_fp.py does for binrpc; prints
each hit (file, offset, evidence) and the totals: flows, address-shaped strings hashed, flows over the hashing
bound, CPU. docs/wallets.md quotes the figures.

    python bench/wallet_fp.py /usr/lib /usr/bin /usr/share /usr/libexec .venv
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

from binrpc_fp import META, files  # type: ignore[import-not-found]  # bench/ is the script's own folder

from egress.detect import wallet
from egress.detect.base import Finding, FlowView


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="+", type=pathlib.Path)
    parser.add_argument("--flow", type=int, default=16 * 1024, help="bytes per flow")
    args = parser.parse_args()
    total = flows = hits = hashed = most = 0
    began = time.process_time()
    for path in files(args.roots):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        total += len(data)
        for offset in range(0, len(data), args.flow):
            flows += 1
            view = FlowView(META, data[offset : offset + args.flow], complete=True)
            found = wallet.detect(view)
            memo = view.memo.get(wallet.__name__)
            count = len(getattr(memo, "hashed", ()))
            hashed, most = hashed + count, max(most, count)
            if isinstance(found, Finding):
                hits += 1
                print(f"hit: {path} at {offset}: {found.category} {found.evidence}", flush=True)
    cpu = time.process_time() - began
    print(
        f"{total / 1e6:.0f} MB in {flows} flows of {args.flow} bytes: {hits} hits, {hashed} strings hashed "
        f"(at most {most} in a flow), {cpu:.0f} s CPU"
    )


if __name__ == "__main__":
    main()
