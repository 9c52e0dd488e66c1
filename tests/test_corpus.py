"""Every row of the public corpus's EXPECTED.tsv holds: what must be found is found, what must not is not.

These are real captures recorded by others; nothing here knows their names, addresses or times.
"""

from __future__ import annotations

import hashlib

import pytest

from egress.detect.registry import build_detectors
from egress.policy.lists import load_name_lists
from egress.scanner import FileStats, Scanner
from tests.corpus import corpus_path, expected_rows, needs_corpus

SCORED = {"mining", "tunnel", "crypto-node"}


@pytest.fixture(scope="module")
def scanner() -> Scanner:
    return Scanner(build_detectors(load_name_lists()))


@pytest.mark.corpus
@needs_corpus
@pytest.mark.parametrize("row", expected_rows(), ids=lambda row: row["file"])
def test_expected_row_holds(scanner: Scanner, row: dict[str, str]) -> None:
    path = corpus_path(row["file"])
    assert hashlib.sha256(path.read_bytes()).hexdigest() == row["sha256"], "capture differs from the listed one"
    stats = FileStats(str(path))
    findings = list(scanner.scan(str(path), stats))
    assert stats.error is None
    assert stats.packets == int(row["packets"])
    found = {item.finding.category.value for item in findings}
    described = "; ".join(f"{f.finding.category}/{f.finding.protocol}: {f.finding.evidence}" for f in findings[:8])
    for category in (part for part in row["must_find"].split(",") if part in SCORED):
        assert category in found, f"no {category} finding in {row['file']} (found: {described or 'nothing'})"
    for category in (part for part in row["must_not_find"].split(",") if part in SCORED):
        assert category not in found, f"{category} wrongly found in {row['file']}: {described}"
