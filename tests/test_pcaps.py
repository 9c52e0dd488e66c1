"""pcaps/: every capture in the folder has a manifest row and every row a file, and ``egress scan`` finds in each
what pcaps/MANIFEST.tsv says it must (``nothing`` for the allowed traffic: no false alarm either)."""

from __future__ import annotations

import pathlib
import shlex
from dataclasses import dataclass

import pytest

from egress.detect.registry import build_detectors
from egress.lab.scenarios import SCENARIOS
from egress.policy.lists import load_name_lists
from egress.scanner import FileStats, Scanner

PCAPS = pathlib.Path(__file__).resolve().parents[1] / "pcaps"
MANIFEST = PCAPS / "MANIFEST.tsv"
COLUMNS = ["file", "holds", "scan_must_find", "command"]
MAX_BYTES = 64 * 1024
"""Each capture stays small: the repository carries them."""


@dataclass(frozen=True, slots=True)
class Row:
    file: str
    holds: str
    must_find: str
    command: str


def manifest() -> list[Row]:
    lines = [line for line in MANIFEST.read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0].split("\t") == COLUMNS, lines[0]
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        cells = line.split("\t")
        assert len(cells) == len(COLUMNS), f"MANIFEST.tsv row {number}: {len(cells)} cells: {line!r}"
        rows.append(Row(*cells))
    return rows


ROWS = manifest()


def test_manifest_and_folder_agree() -> None:
    files = sorted(path.name for path in PCAPS.iterdir() if path.suffix in (".pcap", ".pcapng"))
    listed = sorted(row.file for row in ROWS)
    assert len(listed) == len(set(listed)), "a file listed twice"
    assert [name for name in files if name not in listed] == [], "captures without a manifest row"
    assert [name for name in listed if name not in files] == [], "manifest rows without a capture"


def test_every_demo_attempt_is_recorded() -> None:
    assert sorted(f"{name}.pcap" for name in SCENARIOS) == sorted(
        row.file for row in ROWS if row.command.startswith("egress lab record")
    )


@pytest.mark.parametrize("row", ROWS, ids=[row.file for row in ROWS])
def test_each_row_is_complete_and_its_capture_small(row: Row) -> None:
    assert row.holds.strip() and row.command.strip(), row
    argv = shlex.split(row.command)
    assert argv[0] == "egress", f"{row.file}: the command that made it is an egress command: {row.command!r}"
    if argv[1:3] == ["lab", "record"]:
        assert f"{argv[3]}.pcap" == row.file and argv[3] in SCENARIOS, row
    assert (PCAPS / row.file).stat().st_size <= MAX_BYTES, row.file


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner(build_detectors(load_name_lists(None)))


@pytest.mark.parametrize("row", ROWS, ids=[row.file for row in ROWS])
def test_the_scanner_finds_what_the_manifest_says(scanner: Scanner, row: Row) -> None:
    stats = FileStats(str(PCAPS / row.file))
    found = {f"{item.finding.category.value}/{item.finding.protocol}" for item in scanner.scan(stats.path, stats)}
    assert not stats.error and stats.skipped == 0, (stats.error, stats.skipped)
    assert stats.packets > 0
    if row.must_find == "nothing":
        assert found == set(), f"{row.file}: allowed traffic flagged"
    elif row.must_find != "-":
        wanted = set(row.must_find.split(","))
        assert wanted <= found, f"{row.file}: missing {sorted(wanted - found)}; found {sorted(found)}"
