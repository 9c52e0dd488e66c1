"""Where the shared public corpus is, and its EXPECTED.tsv rows."""

from __future__ import annotations

import csv
import pathlib

import pytest

CORPUS = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
HAVE_CORPUS = (CORPUS / "EXPECTED.tsv").exists()
needs_corpus = pytest.mark.skipif(not HAVE_CORPUS, reason="needs the shared corpus at ../shared/corpus")


def expected_rows() -> list[dict[str, str]]:
    if not HAVE_CORPUS:
        return []
    with (CORPUS / "EXPECTED.tsv").open() as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def corpus_path(row_file: str) -> pathlib.Path:
    """The row's capture. A file listed under one folder may ship under another with the same name; then the
    single file of that name is used (its sha256 is checked against the row by the corpus test)."""
    path = CORPUS / row_file
    if path.exists():
        return path
    matches = sorted(CORPUS.glob(f"*/{pathlib.Path(row_file).name}"))
    if len(matches) != 1:
        pytest.fail(f"{row_file}: not in the corpus")
    return matches[0]
