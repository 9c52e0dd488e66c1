"""`egress scan --jobs N`: the files spread over worker processes give the output of ``--jobs 1``, byte for byte."""

from __future__ import annotations

import pathlib

import pytest

from egress.capture.hot import implementation
from tests.corpus import CORPUS, TUNNELS, needs_corpus, needs_tunnels
from tests.test_cli import egress


def _captures() -> list[str]:
    roots = [root for root in (CORPUS, TUNNELS) if root.exists()]
    return sorted(str(p) for root in roots for p in root.rglob("*") if p.suffix in (".pcap", ".pcapng"))


@pytest.mark.corpus
@needs_corpus
@needs_tunnels
@pytest.mark.parametrize("output", ["--json", "--no-progress"])
def test_jobs_give_the_findings_and_counts_of_one_job_on_the_whole_corpus(output: str) -> None:
    files = _captures()
    one = egress("scan", output, "--jobs", "1", *files)
    two = egress("scan", output, "--jobs", "2", *files)
    assert one.stdout.count("\n") > 100
    assert (two.returncode, two.stdout, two.stderr) == (one.returncode, one.stdout, one.stderr)


def test_a_file_that_cannot_be_read_is_reported_in_its_place(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"not a capture at all")
    one = egress("scan", "--jobs", "1", str(bad), str(tmp_path / "missing.pcap"))
    two = egress("scan", "--jobs", "3", str(bad), str(tmp_path / "missing.pcap"))
    assert one.returncode == 2
    assert (two.returncode, two.stdout, two.stderr) == (one.returncode, one.stdout, one.stderr)


def test_scan_version_says_which_hot_path_runs() -> None:
    result = egress("scan", "--version")
    assert result.returncode == 0
    assert result.stdout.rstrip().endswith(f"scan hot path: {implementation().name}")
