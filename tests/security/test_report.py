"""The suite's table without a lab: rows written by several processes into one file, rendered as one table."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest

from tests.security import report as table

WRITE_ROW = """
import sys
from tests.security import report as table
index = int(sys.argv[1])
table.report(f"t/{index}", "mining", index, index % 2 == 0, "mining" if index else None)
"""
ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_rows_from_several_processes_become_one_table(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "rows.jsonl"
    monkeypatch.setenv(table.REPORT_ENV, str(path))
    environment = {**os.environ, table.REPORT_ENV: str(path), "PYTHONPATH": str(ROOT)}
    processes = [
        subprocess.Popen([sys.executable, "-c", WRITE_ROW, str(index)], cwd=ROOT, env=environment) for index in range(4)
    ]
    assert [process.wait(timeout=60) for process in processes] == [0, 0, 0, 0]
    table.report_fault("redis (SIGKILL)", 1, 1, 0, "no", "stays down")
    table.report_fuzz("tls", 100, 0)
    table.report_fuzz("dns", 50, 2)
    lines = table.render(table.rows(path))
    assert lines[0].split() == ["TECHNIQUE", "CLASS", "LEAKED", "BYTES", "GOAL", "ACHIEVED", "RECORD", "REASON", "NOTE"]
    body = [line.split() for line in lines[2:6]]
    assert [row[0] for row in body] == ["t/0", "t/1", "t/2", "t/3"]
    assert body[0][1:5] == ["mining", "0", "YES", "-"] and body[1][1:5] == ["mining", "1", "no", "mining"]
    assert any(line.startswith("redis (SIGKILL)") and " no " in line for line in lines)
    assert lines[-1] == "fuzz total: 150 inputs, 2 crashes"


def test_without_a_report_file_rows_go_nowhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(table.REPORT_ENV, raising=False)
    table.report("t", "c", 0, False, None)  # no error: a tool importing the harness outside pytest


def test_nothing_to_show_renders_nothing() -> None:
    assert table.render([]) == []
