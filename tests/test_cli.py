"""`egress scan` as a user runs it: output shapes and exit codes.

The commands run in-process (click's runner: the same `main`, arguments, streams and exit codes) rather than as a
new interpreter each, which would import the package again for every call; one test runs ``python -m egress`` itself,
so the entry point a user types is covered too.
"""

from __future__ import annotations

import json
import pathlib
import struct
import subprocess
import sys

import pytest
from click.testing import CliRunner

from egress.cli import main
from tests.corpus import CORPUS, needs_corpus

JSON_FIELDS = {
    *("file", "category", "protocol", "detector", "transport"),
    *("src", "sport", "dst", "dport", "ts", "evidence"),
}


def egress(*args: str) -> subprocess.CompletedProcess[str]:
    """``egress ARGS`` in this process: its exit code, standard output and standard error."""
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def test_python_dash_m_egress_is_the_same_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "egress", "scan", "--fail-on", "bitcoin", "x.pcap"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "unknown category 'bitcoin'" in result.stderr


@needs_corpus
def test_json_lines_carry_the_documented_fields() -> None:
    result = egress("scan", "--json", str(CORPUS / "tunnel" / "zeek_ssh_ssh-on-port-80.pcap"))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records, result.stderr
    for record in records:
        assert record.keys() >= JSON_FIELDS
        assert record["ts"].endswith("Z")
    assert any(record["category"] == "tunnel" for record in records)
    assert "scanned 1 file(s)" in result.stderr


@needs_corpus
def test_table_output_and_fail_on() -> None:
    capture = str(CORPUS / "mining" / "peafowl_stratum.pcap")
    table = egress("scan", capture)
    assert table.returncode == 0
    assert "CATEGORY" in table.stdout
    assert "mining" in table.stdout
    assert egress("scan", "--fail-on", "mining", capture).returncode == 1
    assert egress("scan", "--fail-on", "tunnel", capture).returncode == 0


@needs_corpus
def test_clean_capture_with_fail_on_exits_zero() -> None:
    result = egress("scan", "--fail-on", "mining,tunnel", str(CORPUS / "benign" / "ndpi_443-curl.pcap"))
    assert result.returncode == 0, result.stdout


def test_unknown_category_is_a_usage_error(tmp_path: pathlib.Path) -> None:
    result = egress("scan", "--fail-on", "bitcoin", str(tmp_path / "x.pcap"))
    assert result.returncode == 2
    assert "unknown category 'bitcoin'" in result.stderr


@needs_corpus
def test_bad_file_is_named_and_the_other_files_are_still_scanned(tmp_path: pathlib.Path) -> None:
    good = (CORPUS / "tunnel" / "zeek_ssh_ssh-on-port-80.pcap").read_bytes()
    truncated = tmp_path / "truncated.pcap"
    truncated.write_bytes(good[: len(good) // 2])
    garbage = tmp_path / "notes.txt"
    garbage.write_text("not a capture\n")
    whole = tmp_path / "whole.pcap"
    whole.write_bytes(good)
    result = egress("scan", "--json", str(truncated), str(garbage), str(whole))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{truncated}: truncated packet" in result.stderr
    assert f"{garbage}: not a pcap or pcapng file" in result.stderr
    files = {json.loads(line)["file"] for line in result.stdout.splitlines()}
    assert str(whole) in files


def test_malformed_packets_are_counted_not_fatal(tmp_path: pathlib.Path) -> None:
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    broken = b"\x02" * 12 + b"\x08\x00" + b"\x45\x00\x00"  # claims IPv4, 3 bytes of it
    record = struct.pack("<IIII", 1, 0, len(broken), len(broken)) + broken
    path = tmp_path / "broken.pcap"
    path.write_bytes(header + record * 3)
    result = egress("scan", str(path))
    assert result.returncode == 0
    assert "skipped 3 malformed packet(s) (first at 1, 2, 3)" in result.stderr
    assert "3 packets (3 skipped as malformed)" in result.stderr


@pytest.mark.parametrize("args", [["scan"], ["nonsense"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    assert egress(*args).returncode == 2


ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_rules_check_accepts_the_shipped_policies() -> None:
    result = egress(
        "rules", "check", str(ROOT / "rules" / "policy.example.yaml"), str(ROOT / "rules" / "lab-policy.yaml")
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok") == 2


def test_rules_check_reports_every_problem_with_file_and_line(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\n"
        "sandboxes:\n"
        "  agents:\n"
        "    sources: [10.0.0.0/33]\n"
        "    mode: sometimes\n"
        "    allow:\n"
        "      hosts: [pypi.org:70000]\n"
    )
    result = egress("rules", "check", str(bad))
    assert result.returncode == 1
    for line in (4, 5, 7):
        assert f"{bad}:{line}:" in result.stderr, result.stderr


def test_nft_render_prints_the_table_for_a_policy() -> None:
    result = egress(
        "nft", "render", "--policy", str(ROOT / "rules" / "lab-policy.yaml"),
        "--sandbox-if", "sbx0", "--uplink-if", "up0", "--workers", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "table inet egress" in result.stdout
    assert "redirect to" in result.stdout
