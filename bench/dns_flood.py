"""DNS flood benchmark: another sandbox's answer latency while one sandbox floods the resolver (red team 7).

Brings up the security lab's gateway (tests/security/harness.py `open_lab`, policy
tests/security/policies/redteam_sources_pinned.yaml: ``agent`` and ``builder`` on one link, builder's address added
to the agent's interface) and runs `tests.security.redteam_dnsflood_kit.flood_main` in the sandbox: the agent's
``--connections`` TCP connections with ``--queries`` pipelined refused queries each, read as they are answered,
and meanwhile builder's allowed.lab over UDP (2 s x 5 attempts) and over new TCP connections, again and again.
With ``--flood udp`` (or ``both``, the default) the round also runs the UDP row's flood
(`tests.security.redteam_dnsflood_kit.udp_flood_main`): the agent pours refused queries over UDP from 16 source
ports for ``--udp-seconds``, as fast as one process sends, and builder asks allowed.lab over UDP meanwhile (3 s x 5
attempts). Prints, per round and flood, the flood's size and how long it took to be answered, and builder's
latencies during it (p50, p90, max; queries not answered within their budget counted apart), with the load
average. Speed is measured here, never asserted in the lab module (tests/security/test_redteam_dns_flood.py).

    python bench/dns_flood.py                               # 120 connections x 1,200 queries, then UDP; 2 rounds
    python bench/dns_flood.py --flood udp --rounds 1
    cd /path/to/main && PYTHONPATH=$PWD python bench/dns_flood.py    # another checkout's resolver (run from there)
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from egress.lab.topology import GATEWAY_SBX_V4  # noqa: E402
from tests.security.harness import open_lab  # noqa: E402
from tests.security.redteam_dnsflood_kit import BUDGET, CONNECTIONS, POUR_SECONDS, QUERIES, UDP_BUDGET  # noqa: E402
from tests.security.test_redteam_dnstcp_busy import AGENT, BUILDER, POLICY, _builder_address  # noqa: E402

KIT = "from tests.security.redteam_dnsflood_kit import flood_main; flood_main()"
UDP_KIT = "from tests.security.redteam_dnsflood_kit import udp_flood_main; udp_flood_main()"


def _row(label: str, seconds: list[float], unanswered: int, budget: float = BUDGET) -> str:
    if not seconds:
        return f"  {label}: none answered, {unanswered} not within {budget:.0f} s"
    ms = sorted(s * 1000 for s in seconds)
    p90 = ms[min(len(ms) - 1, int(len(ms) * 0.9))]
    return (f"  {label}: {len(ms)} answered, p50 {statistics.median(ms):.1f} ms, p90 {p90:.1f} ms, "
            f"max {ms[-1]:.1f} ms; {unanswered} not within {budget:.0f} s")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=CONNECTIONS, help="the agent's TCP connections")
    parser.add_argument("--queries", type=int, default=QUERIES, help="pipelined queries on each")
    parser.add_argument("--rounds", type=int, default=2, help="floods, one after the other, in the same lab")
    parser.add_argument("--flood", choices=["tcp", "udp", "both"], default="both", help="which flood(s) per round")
    parser.add_argument("--udp-seconds", type=float, default=POUR_SECONDS, help="how long the UDP flood pours")
    parser.add_argument("--json", type=pathlib.Path, help="also write every figure here")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    from egress.dnsserver import listen

    print(f"resolver: {listen.__file__}")
    results: list[dict[str, Any]] = []
    with open_lab(POLICY, workers=1) as lab:
        _builder_address(lab)
        kinds = ["tcp", "udp"] if args.flood == "both" else [args.flood]
        for round_no in range(args.rounds):
            for kind in kinds:
                base = [sys.executable, "-c", KIT if kind == "tcp" else UDP_KIT, GATEWAY_SBX_V4, AGENT, BUILDER]
                size = [str(args.connections), str(args.queries)] if kind == "tcp" else [str(args.udp_seconds)]
                done = lab.sandbox([*base, "allowed.lab", *size], timeout=900)
                lines = done.stdout.strip().splitlines()
                if not lines:
                    print(f"round {round_no + 1} {kind}: no result: {done.stderr[-1500:]}")
                    continue
                seen = json.loads(lines[-1])
                seen["load"] = os.getloadavg()[0]
                seen["kind"] = kind
                results.append(seen)
                flood = seen["flood"]
                took = f"{flood['seconds']:.1f} s" if flood["seconds"] is not None else "-"
                print(f"round {round_no + 1}: {kind} flood {flood['answered']}/{flood['sent']} answered in {took}, "
                      f"load {seen['load']:.1f}")  # fmt: skip
                during = [p for p in seen["probes"] if p["during_flood"]]
                budget = BUDGET if kind == "tcp" else UDP_BUDGET
                for transport in ("udp", "tcp"):
                    mine = [p for p in during if p["transport"] == transport]
                    answered = [p["seconds"] for p in mine if p["seconds"] is not None]
                    if mine:
                        label = f"builder {transport} during the {kind} flood"
                        print(_row(label, answered, len(mine) - len(answered), budget), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
