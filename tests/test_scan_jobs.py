"""`egress scan --jobs N`: files spread over worker processes, and one file split by flow over them, give the
output of ``--jobs 1``, byte for byte."""

from __future__ import annotations

import functools
import multiprocessing
import pathlib
import struct
import threading

import pytest

from bench.build_capture import _shift, _to_ethernet
from egress import scan_jobs, scan_split
from egress.capture.hot import implementation
from egress.capture.reader import CaptureError, read_frames
from egress.cli import _scanner_for
from egress.report import as_record
from egress.scan_jobs import SPLIT_ENV, scan_files
from egress.scan_split import SplitAbort
from egress.scanner import FileStats
from tests.corpus import CORPUS, TUNNELS, needs_corpus, needs_tunnels
from tests.test_cli import egress


def _captures() -> list[str]:
    roots = [root for root in (CORPUS, TUNNELS) if root.exists()]
    return sorted(str(p) for root in roots for p in root.rglob("*") if p.suffix in (".pcap", ".pcapng"))


def _looped(root: pathlib.Path, out: pathlib.Path, loops: int, step: float) -> pathlib.Path:
    """Every frame of the captures under ``root``, ``loops`` times (addresses shifted per loop, as bench/scan.py
    builds its capture), ``step`` seconds of capture time apart: with steps long enough, many table generations."""
    frames: list[bytes] = []
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".pcap", ".pcapng")):
        try:
            for _, linktype, frame in read_frames(str(path)):
                eth = _to_ethernet(linktype, frame)
                if eth is not None:
                    frames.append(eth)
        except CaptureError:
            continue  # the frames up to the damage are in
    clock = 1_600_000_000.0
    with out.open("wb") as handle:
        handle.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for loop in range(1, loops + 1):
            for frame in frames:
                shifted = bytearray(frame)
                _shift(shifted, loop)
                clock += step
                sec = int(clock)
                handle.write(struct.pack("<IIII", sec, int((clock - sec) * 1e6), len(shifted), len(shifted)))
                handle.write(shifted)
    return out


Results = list[tuple[list[dict[str, object]], FileStats]]


def _results(paths: list[str], jobs: int) -> Results:
    """Each file's findings (as `--json` prints them) and stats, scanned with ``jobs`` as the CLI scans."""
    make = functools.partial(_scanner_for, None, implementation().name == "compiled")
    return [([as_record(f) for f in found], stats) for stats, found in scan_files(make(), paths, jobs, None, make)]


def _same(one: Results, many: Results) -> None:
    """Every finding, its order and every count alike; the peak of table entries is the workers' sum (each
    holds a tunnel carrier's entries) and the workers are those of the split."""
    for (found, stats), (split_found, split_stats) in zip(one, many, strict=True):
        assert split_found == found, stats.path
        for name in ("packets", "skipped", "skipped_at", "flows", "unidentified", "findings", "error", "unsupported"):
            assert getattr(split_stats, name) == getattr(stats, name), (stats.path, name)


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


@pytest.mark.corpus
@needs_corpus
@needs_tunnels
def test_each_corpus_file_split_by_flow_gives_the_findings_and_counts_of_one_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(SPLIT_ENV, "0")  # split every file, however small
    files = _captures()
    one = _results(files, 1)
    two = _results(files, 2)
    assert {stats.workers for _, stats in two} == {2}
    assert sum(len(found) for found, _ in one) > 100
    _same(one, two)
    cli_one = egress("scan", "--json", "--jobs", "1", *files)
    cli_two = egress("scan", "--json", "--jobs", "2", *files)
    assert (cli_two.returncode, cli_two.stdout, cli_two.stderr) == (cli_one.returncode, cli_one.stdout, cli_one.stderr)


@pytest.fixture(scope="module")
def looped(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The corpus twice at 10 ms a packet (about 380 s of capture time: three generations and more), and the
    tunnel corpus at a packet a second (a generation every 120 packets: flows idle out all the time)."""
    folder = tmp_path_factory.mktemp("looped")
    corpus = _looped(CORPUS, folder / "corpus.pcap", 2, 0.01)
    return [str(corpus), str(_looped(TUNNELS, folder / "tunnels.pcap", 1, 1.0))]


@pytest.mark.corpus
@needs_corpus
@needs_tunnels
@pytest.mark.parametrize("jobs", [2, 3])
def test_a_looped_capture_of_many_generations_split_by_flow_gives_the_findings_of_one_job(
    looped: list[str], jobs: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SPLIT_ENV, "0")
    one = _results(looped, 1)
    many = _results(looped, jobs)
    assert [stats.workers for _, stats in many] == [jobs, jobs]
    assert all(stats.peak_entries for _, stats in one)
    _same(one, many)
    cli_one = egress("scan", "--json", "--jobs", "1", looped[0])
    cli_many = egress("scan", "--json", "--jobs", str(jobs), looped[0])
    assert cli_one.stdout.count("\n") > 500
    assert (cli_many.returncode, cli_many.stdout) == (cli_one.returncode, cli_one.stdout)
    assert cli_many.stderr == cli_one.stderr


@pytest.mark.corpus
@needs_corpus
@needs_tunnels
def test_a_file_below_the_split_size_is_scanned_whole(looped: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SPLIT_ENV, str(pathlib.Path(looped[0]).stat().st_size + 1))
    assert [stats.workers for _, stats in _results(looped[:1], 2)] == [1]


@pytest.mark.corpus
@needs_corpus
@needs_tunnels
def test_a_split_a_worker_gives_up_is_scanned_again_in_one_process(
    looped: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker 0 (this process) gives up the first file half way: the others, told so, stop waiting for it, and
    the file is scanned in one process, with the same findings; the next file is split again."""
    real = scan_jobs.scan_part
    calls: list[str] = []

    def gives_up_once(*args: object, **kwargs: object) -> object:
        calls.append(str(args[1]))
        if len(calls) == 1:
            raise SplitAbort("as the test asks")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setenv(SPLIT_ENV, "0")
    one = _results(looped, 1)
    monkeypatch.setattr(scan_jobs, "scan_part", gives_up_once)
    two = _results(looped, 2)
    assert calls == looped
    assert [stats.workers for _, stats in two] == [1, 2]
    _same(one, two)


@pytest.mark.corpus
@needs_corpus
@needs_tunnels
def test_a_generation_too_large_to_judge_apart_is_scanned_in_one_process(
    looped: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One scanner rotates early past `MAX_TABLE_ENTRIES` keys, which split workers cannot tell apart: a worker
    holding more than its share gives the file up (here with the bound made small: forked workers inherit it)."""
    monkeypatch.setenv(SPLIT_ENV, "0")
    one = _results(looped[:1], 1)
    monkeypatch.setattr(scan_split, "MAX_TABLE_ENTRIES", 64)
    two = _results(looped[:1], 2)
    assert [stats.workers for _, stats in two] == [1]
    _same(one, two)


@pytest.mark.corpus
@needs_corpus
@needs_tunnels
def test_workers_spawned_while_another_thread_runs_split_alike(
    looped: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With another thread alive the team spawns its workers (each builds its own scanner) instead of forking."""
    monkeypatch.setenv(SPLIT_ENV, "0")
    one = _results(looped, 1)
    started: list[str] = []
    real = multiprocessing.get_context

    def context(method: str | None = None) -> object:
        started.append(str(method))
        return real(method)

    monkeypatch.setattr(multiprocessing, "get_context", context)
    release = threading.Event()
    other = threading.Thread(target=release.wait)
    other.start()
    try:
        two = _results(looped, 2)
    finally:
        release.set()
        other.join()
    assert "spawn" in started and "fork" not in started
    assert [stats.workers for _, stats in two] == [2, 2]
    _same(one, two)


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
