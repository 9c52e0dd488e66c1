"""``python -m tests.security.pcaps_manifest pcaps``: a pcaps/MANIFEST.tsv row for each newly recorded technique.

Reads the journal that a recording run of the suite wrote (``EGRESS_RECORD_PCAPS``, tests/security/recording.py)
and adds a row for each kept file that has none yet: what it holds (the technique, its class, the suite's verdict
on it), what ``egress scan`` finds in it now (run here, never written by hand: ``nothing`` when it finds nothing),
and the command that made it. Rows already in the manifest are kept as they are: a person may have judged them
(a known gap, an explanation of why the scanner cannot tell); tests/test_pcaps.py holds every row to the scanner.
Techniques that took no capture (their test has no `SecurityLab.capture` block) are listed on stderr.
"""

from __future__ import annotations

import json
import pathlib
import shlex
import sys
from collections.abc import Sequence

from egress.detect.registry import build_detectors
from egress.policy.lists import load_name_lists
from egress.scanner import FileStats, Scanner
from tests.security.recording import JOURNAL, RECORD_ENV, SUBDIR

MANIFEST = "MANIFEST.tsv"


def findings(scanner: Scanner, path: pathlib.Path) -> str:
    """What the scanner finds in ``path``, as the manifest writes it (``category/protocol,...`` or ``nothing``)."""
    stats = FileStats(str(path))
    found = {f"{item.finding.category.value}/{item.finding.protocol}" for item in scanner.scan(stats.path, stats)}
    return ",".join(sorted(found)) or "nothing"


def holds(row: dict[str, object]) -> str:
    verdict = f"leaked {row['leaked']} B, goal {'reached' if row['goal'] else 'not reached'}"
    verdict += f", record {row['reason'] or 'none'}"
    note = f" ({row['note']})" if row["note"] else ""
    return f"technique {row['technique']} [{row['cls']}]{note} at the gateway's sandbox side; the suite: {verdict}"


def command(test: str) -> str:
    return f"{RECORD_ENV}=pcaps pytest -p no:randomly {shlex.quote(test)}"


def main(argv: Sequence[str]) -> int:
    folder = pathlib.Path(argv[0] if argv else "pcaps")
    journal = folder / SUBDIR / JOURNAL
    if not journal.exists():
        print(f"no {journal}: record first (make pcaps)", file=sys.stderr)
        return 1
    manifest = folder / MANIFEST
    lines = manifest.read_text().splitlines()
    listed = {line.split("\t", 1)[0] for line in lines if line and not line.startswith("#")}
    scanner = Scanner(build_detectors(load_name_lists(None)))
    added: list[str] = []
    for entry in (json.loads(line) for line in journal.read_text().splitlines() if line):
        if not entry["file"]:
            print(f"no sandbox-side capture: {entry['technique']} ({entry['test']})", file=sys.stderr)
        elif entry["file"] not in listed:
            listed.add(entry["file"])
            cells = [entry["file"], holds(entry), findings(scanner, folder / entry["file"]), command(entry["test"])]
            added.append("\t".join(cells))
    manifest.write_text("\n".join([*lines, *sorted(added)]) + "\n")
    journal.unlink()
    print(f"{len(added)} row(s) added to {manifest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
