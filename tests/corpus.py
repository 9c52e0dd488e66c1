"""Where the shared public corpora are, and their EXPECTED.tsv rows: ``../shared/corpus`` (mining, tunnels,
benign) and ``../shared/corpus-tunnels`` (more tunnel classes and hard negatives, issue 13).

``EGRESS_SHARED`` names another folder holding them. Without them the tests that read them skip, except in CI
(``CI=true``), where a missing corpus stops the run at collection (tests/conftest.py): CI must run them all.
"""

from __future__ import annotations

import csv
import os
import pathlib

import pytest

SHARED = pathlib.Path(os.environ.get("EGRESS_SHARED") or pathlib.Path(__file__).resolve().parents[1].parent / "shared")
CORPUS = SHARED / "corpus"
TUNNELS = SHARED / "corpus-tunnels"
HAVE_CORPUS = (CORPUS / "EXPECTED.tsv").exists()
HAVE_TUNNELS = (TUNNELS / "EXPECTED.tsv").exists()
needs_corpus = pytest.mark.skipif(not HAVE_CORPUS, reason=f"needs the shared corpus at {CORPUS} (or EGRESS_SHARED)")
needs_tunnels = pytest.mark.skipif(not HAVE_TUNNELS, reason=f"needs the shared corpus at {TUNNELS} (or EGRESS_SHARED)")


def missing_in_ci() -> str | None:
    """Why a CI run cannot run every corpus test, or None."""
    absent = [str(path) for path, have in ((CORPUS, HAVE_CORPUS), (TUNNELS, HAVE_TUNNELS)) if not have]
    return f"the shared corpus is missing: {', '.join(absent)} (set EGRESS_SHARED to its folder)" if absent else None


def expected_rows(corpus: pathlib.Path = CORPUS) -> list[dict[str, str]]:
    if not (corpus / "EXPECTED.tsv").exists():
        return []
    with (corpus / "EXPECTED.tsv").open() as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def corpus_path(row_file: str, corpus: pathlib.Path = CORPUS) -> pathlib.Path:
    """The row's capture. A file listed under one folder may ship under another with the same name; then the
    single file of that name is used (its sha256 is checked against the row by the corpus test)."""
    path = corpus / row_file
    if path.exists():
        return path
    matches = sorted(corpus.glob(f"*/{pathlib.Path(row_file).name}"))
    if len(matches) != 1:
        pytest.fail(f"{row_file}: not in the corpus")
    return matches[0]
