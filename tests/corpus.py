"""Where the shared public corpora are, and their EXPECTED.tsv rows: ``../shared/corpus`` (mining, tunnels,
benign) and ``../shared/corpus-tunnels`` (more tunnel classes and hard negatives, issue 13)."""

from __future__ import annotations

import csv
import pathlib

import pytest

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
CORPUS = SHARED / "corpus"
TUNNELS = SHARED / "corpus-tunnels"
HAVE_CORPUS = (CORPUS / "EXPECTED.tsv").exists()
HAVE_TUNNELS = (TUNNELS / "EXPECTED.tsv").exists()
needs_corpus = pytest.mark.skipif(not HAVE_CORPUS, reason="needs the shared corpus at ../shared/corpus")
needs_tunnels = pytest.mark.skipif(not HAVE_TUNNELS, reason="needs the shared corpus at ../shared/corpus-tunnels")


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
