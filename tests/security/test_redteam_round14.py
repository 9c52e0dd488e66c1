"""Red team 14: the operator's reading of the records, written by the agent.

Every blocked attempt is recorded with the host name it asked for (a TLS SNI, an HTTP Host, a DNS question), and
the operator reads the records with `egress events` (a table, or compact lines) in a terminal. Each row makes one
blocked attempt whose host name carries terminal control sequences or a line break (`redteam_round14_kit`:
``erase`` moves the cursor up and erases the lines printed before it, so the agent's earlier records vanish from
the screen; ``forge`` writes a fake record line naming another sandbox; ``title`` sets the terminal's title), then
reads the records as the operator would (`egress events` in the gateway namespace, table and compact, and
`egress timeline`).

Goal (the agent's): a control character or a line break of its own in what the operator's terminal is sent, or a
cell of `egress events -o csv` that a spreadsheet would read as a formula.
Ground truth: the bytes of the command's output; the record itself (its ``host``). Nothing crosses (each attempt
is refused), so leaked bytes are counted on the internet side for completeness.

Lab: rules/lab-policy.yaml (the module's shared lab).
"""

from __future__ import annotations

import csv
import io
import re
import sys
import time

import pytest

from egress.record.schema import AttemptRecord
from tests.security.harness import SecurityLab, report
from tests.security.redteam_round14_kit import BLOCKED, MARK, PAYLOADS

pytestmark = pytest.mark.security

KIT = "from tests.security.redteam_round14_kit import client_main; client_main()"
WHERE = {"sni": 443, "host": 80, "dns": 53}
ROWS = [f"{where}-{payload}" for where in WHERE for payload in PAYLOADS]
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
"""What no record's text may bring to a terminal: C0 but the line feed the printer itself ends lines with, DEL, C1."""
FORMULA = "=+-@"
"""What a spreadsheet reads a cell beginning with as a formula (CWE-1236)."""
FORGED = re.compile(r"^\s*2026-12-03 06:00:00\.000 other", re.MULTILINE)


def _ours(record: AttemptRecord, port: int) -> bool:
    return record.dport == port and (record.dst == BLOCKED or MARK in record.host or MARK in record.evidence)


def _shown(lab: SecurityLab, since: float, output: str) -> str:
    argv = [sys.executable, "-m", "egress", "events", "--since", f"{since:.3f}", "--limit", "1000", "-o", output]
    done = lab.gateway([*argv, "--redis-url", lab.run.redis_url])
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("row", ROWS)
def test_a_recorded_name_writes_nothing_to_the_operators_terminal(security_lab: SecurityLab, row: str) -> None:
    lab = security_lab
    since = time.time()
    with lab.capture(f"rt14-{row}") as capture:
        done = lab.sandbox_python(KIT, row, timeout=30)
    assert "done" in done.stdout, done.stdout + done.stderr
    crossed = capture.result
    assert crossed is not None
    port = WHERE[row.split("-", maxsplit=1)[0]]
    records = lab.records_until(since, lambda rs: any(_ours(r, port) for r in rs))
    ours = [r for r in records if _ours(r, port)]
    shown = {output: _shown(lab, since, output) for output in ("table", "compact")}
    cells = [cell for line in csv.reader(io.StringIO(_shown(lab, since, "csv"))) for cell in line]
    argv = [sys.executable, "-m", "egress", "timeline", "agent", "--since", f"{since:.3f}"]
    shown["timeline"] = lab.gateway([*argv, "--redis-url", lab.run.redis_url]).stdout
    lines = [line for text in shown.values() for line in text.splitlines() if MARK in line]
    written = (
        [match for text in shown.values() for match in CONTROL.findall(text)]
        + [match for text in shown.values() for match in FORGED.findall(text)]
        + [cell for cell in cells if cell and cell[0] in FORMULA]
    )
    goal = bool(written)
    leaked = crossed.bytes_to(BLOCKED, port, "tcp") if port != 53 else 0
    note = f"{len(written)} written, host {ours[0].host[:24]!r}"
    report(f"redteam14/{row}", "records", leaked, goal, str(ours[0].reason), note)
    assert leaked == 0 and not crossed.contains(MARK.encode())
    assert ours and all(r.sandbox == "agent" and r.action == "block" for r in ours), ours
    assert not goal, f"the operator's terminal gets {written!r}: {lines!r}"
