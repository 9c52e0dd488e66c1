"""Detection benchmark: per class of capture, how many files egress finds and how many nDPI 5.0 finds, side by side
on the same files (the public corpora's EXPECTED.tsv rows).

nDPI 5.0 is run through nfstream 6.6 (which bundles it), in a virtualenv of its own so the project's stays as it
is: ``python -m venv /work/nfstream-venv && /work/nfstream-venv/bin/pip install nfstream==6.6.0``. Each capture
goes through ``NFStreamer`` with its default configuration; a file counts as found by nDPI when one of its flows
is named what the row must find (`NDPI_TUNNELS`, `NDPI_MINING`, `NDPI_NODES`, or a VPN/mining category). For
egress, when the scanner reports a finding of the row's category. A benign file counts against a tool when it
names a tunnel or mining in it.

    python bench/detect.py --corpus ../shared/corpus ../shared/corpus-tunnels [--ndpi-python PATH] [-v]
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import subprocess
import sys
from collections import defaultdict

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from egress import shipped  # noqa: E402
from egress.detect.registry import build_detectors  # noqa: E402
from egress.policy.lists import load_name_lists  # noqa: E402
from egress.scanner import FileStats, Scanner  # noqa: E402

NDPI_TUNNELS = frozenset(
    {"WireGuard", "OpenVPN", "IPSec", "PPTP", "GRE", "Teredo", "VXLAN", "SOCKS", "Tor", "SSH", "Softether",
     "TunnelBear", "ProtonVPN", "Mullvad", "NordVPN", "HotspotShield", "CloudflareWarp", "Tailscale", "L2TP",
     "IP_in_IP", "IPIP", "DoH_DoT", "iodine", "DNScrypt", "HTTP_Proxy", "HTTP_Connect", "Psiphon", "Ultrasurf",
     "Shadowsocks", "Obfuscated", "Lantern", "Spotflux", "Hamachi", "ZeroTier", "GTP", "CAPWAP", "IP_IPv6"}
)  # fmt: skip
"""nDPI protocol names (ndpi_protocol_ids.h / ndpi_main.c) that are tunnels or VPNs."""
NDPI_MINING = frozenset({"Mining"})
NDPI_NODES = frozenset({"Bitcoin", "Ethereum", "Monero", "Mining"})

CLASSES = (
    ("ip-in-ip", ("4in4", "4in6", "6in4")),
    ("gre", ("gre",)),
    ("vxlan/teredo", ("vxlan", "teredo")),
    ("wireguard", ("wireguard", "protonvpn", "tunnelbear")),
    ("openvpn", ("openvpn",)),
    ("ipsec/pptp/softether", ("ipsec", "pptp", "softether")),
    ("encrypted proxy", ("shadowsocks", "vmess")),
    ("dns tunnel", ("iodine", "dns2tcp", "dns_exfil", "doh")),
    ("icmp tunnel", ("icmp",)),
    ("ssh", ("ssh",)),
    ("socks/http proxy", ("socks", "http_connect")),
    ("tor", ("tor",)),
)
"""Finer classes of tunnel captures, by a word of the file's name."""

NDPI_CHILD = r"""
import json, sys
from nfstream import NFStreamer
for path in sys.argv[1:]:
    try:
        flows = NFStreamer(source=path, statistical_analysis=False, n_dissections=255)
        seen = sorted({(f.application_name, f.application_category_name) for f in flows})
        print(json.dumps({"file": path, "seen": seen}), flush=True)
    except Exception as exc:  # one unreadable file must not hide the others' answers
        print(json.dumps({"file": path, "error": str(exc)}), flush=True)
"""


def _class(row: dict[str, str]) -> str:
    kind = row["must_find"] if row["must_find"] != "none" else "benign"
    if kind != "tunnel":
        return kind
    name = pathlib.Path(row["file"]).name.lower()
    return next((label for label, words in CLASSES if any(word in name for word in words)), "tunnel (other)")


def _rows(corpora: list[pathlib.Path]) -> list[tuple[str, pathlib.Path, dict[str, str]]]:
    rows = []
    for corpus in corpora:
        with (corpus / "EXPECTED.tsv").open() as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                path = corpus / row["file"]
                if not path.exists():
                    matches = sorted(corpus.glob(f"*/{path.name}"))
                    path = matches[0] if len(matches) == 1 else path
                rows.append((_class(row), path, row))
    return rows


def _ndpi(python: str, paths: list[pathlib.Path]) -> dict[str, list[tuple[str, str]]] | None:
    if not pathlib.Path(python).exists():
        return None
    done = subprocess.run([python, "-c", NDPI_CHILD, *map(str, paths)], capture_output=True, text=True, check=False)
    answers: dict[str, list[tuple[str, str]]] = {}
    for line in done.stdout.splitlines():
        item = json.loads(line)
        answers[item["file"]] = [tuple(pair) for pair in item.get("seen", [])]
    return answers


def _ndpi_names(seen: list[tuple[str, str]], wanted: str) -> set[str]:
    """What nDPI named in a file that counts for ``wanted`` (mining, crypto-node, tunnel; benign: any of them)."""
    names = set()
    for name, category in seen:
        parts = set(name.split("."))
        tunnel = bool(parts & NDPI_TUNNELS) or category == "VPN"
        mining = bool(parts & NDPI_MINING) or category == "Mining"
        node = bool(parts & NDPI_NODES) or category in ("Crypto_Currency", "Cryptocurrency")
        # SSH to an ordinary server is no false alarm (egress judges SSH to 22 by policy, not as a tunnel)
        benign_alarm = (tunnel and "SSH" not in parts) or mining
        hit = {"tunnel": tunnel, "mining": mining, "crypto-node": node}.get(wanted, benign_alarm)
        if hit:
            names.add(name)
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", nargs="+", type=pathlib.Path, default=[HERE.parent.parent / "shared" / "corpus"])
    parser.add_argument("--ndpi-python", default="/work/nfstream-venv/bin/python", help="python with nfstream 6.6")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per file as well")
    args = parser.parse_args()
    rows = _rows(args.corpus)
    scanner = Scanner(build_detectors(load_name_lists(shipped.CHECKOUT_RULES / "lists")))
    ndpi = _ndpi(args.ndpi_python, [path for _, path, _ in rows])
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for label, path, row in rows:
        stats = FileStats(str(path))
        findings = list(scanner.scan(str(path), stats))
        wanted = row["must_find"] if row["must_find"] != "none" else "benign"
        ours = {f"{f.finding.category}/{f.finding.protocol}" for f in findings}
        if wanted == "benign":
            ours = {item for item in ours if item.split("/")[0] in ("mining", "tunnel")}
        else:
            ours = {item for item in ours if item.split("/")[0] == wanted}
        theirs = _ndpi_names(ndpi.get(str(path), []), wanted) if ndpi is not None else set()
        total = totals[label]
        total[0] += 1
        total[1] += bool(ours)
        total[2] += bool(theirs)
        if args.verbose:
            print(f"{row['file']:<50} {label:<22} egress {sorted(ours) or '-'}  nDPI {sorted(theirs) or '-'}")
    title = "nDPI 5.0 (nfstream 6.6)" if ndpi is not None else f"nDPI: not run ({args.ndpi_python} missing)"
    print(f"\n{'class':<24} {'files':>5}  {'egress':>6}  {title}")
    for label in sorted(totals):
        files, ours_count, theirs_count = totals[label]
        shown = "-" if ndpi is None else str(theirs_count)
        note = "  (false alarms)" if label == "benign" else ""
        print(f"{label:<24} {files:>5}  {ours_count:>6}  {shown:>6}{note}")


if __name__ == "__main__":
    main()
