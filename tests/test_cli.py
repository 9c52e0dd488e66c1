"""`egress scan` as a user runs it: output shapes and exit codes.

The commands run in-process (click's runner: the same `main`, arguments, streams and exit codes) rather than as a
new interpreter each, which would import the package again for every call; one test runs ``python -m egress`` itself,
so the entry point a user types is covered too.
"""

from __future__ import annotations

import gzip
import json
import logging
import lzma
import os
import pathlib
import struct
import subprocess
import sys
from typing import BinaryIO

import click
import pytest
from click.testing import CliRunner

from egress.cli import main
from egress.cli_gateway import redis_url_callback
from tests.corpus import CORPUS, needs_corpus

JSON_FIELDS = {
    *("file", "category", "protocol", "detector", "transport"),
    *("src", "sport", "dst", "dport", "ts", "evidence"),
}


def egress(*args: str, stdin: BinaryIO | None = None) -> subprocess.CompletedProcess[str]:
    """``egress ARGS`` in this process: its exit code, standard output and standard error (``stdin`` is its
    standard input). The environment and the root logger are put back afterwards: the long-running commands set
    both up for their child processes (`egress.logsetup`) before they check the rest of their options."""
    environment, root = dict(os.environ), logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        result = CliRunner().invoke(main, list(args), input=stdin, catch_exceptions=False)
    finally:
        os.environ.clear()
        os.environ.update(environment)
        root.handlers[:], root.level = handlers, level
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


def test_rules_check_refuses_what_apply_would_fail_on(tmp_path: pathlib.Path) -> None:
    """The issue's case: a zone id passed the check, then `gateway run` died with an NftError traceback."""
    bad = tmp_path / "zone.yaml"
    bad.write_text("version: 1\nsandboxes:\n  agents:\n    sources: [10.0.0.0/24, 'fe80::1%vlan42/128']\n")
    result = egress("rules", "check", "--no-nft", str(bad))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{bad}:4: sandboxes.agents.sources[1]: 'fe80::1%vlan42/128': an IPv6 zone id")


def test_rules_check_gateway_addresses_and_warnings(tmp_path: pathlib.Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "version: 1\nsandboxes:\n  agents:\n    sources: [192.0.2.0/24]\n    mode: report\n"
        "    allow: {networks: [{cidr: 198.51.100.0/24}]}\n"
    )
    result = egress("rules", "check", "--no-nft", str(policy))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{policy}: ok (2 warnings; nft -c: skipped: --no-nft)\n"
    assert f"{policy}:6: sandboxes.agents.allow.networks[0]: warning:" in result.stderr
    result = egress("rules", "check", "--no-nft", "--gateway-address", "192.0.2.1", str(policy))
    assert result.returncode == 1 and "contains 192.0.2.1, an address of the gateway" in result.stderr
    assert egress("rules", "check", "--gateway-address", "nope", str(policy)).returncode == 2


def test_rules_check_size_cap(tmp_path: pathlib.Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nsandboxes:\n  agents:\n    sources: [192.0.2.0/24]\n")
    result = egress("rules", "check", "--no-nft", "--max-bytes", "20", str(policy))
    assert result.returncode == 1 and f"{policy}:1: file too large:" in result.stderr


def test_rules_diff_text_json_and_exit_codes(tmp_path: pathlib.Path) -> None:
    old, new, bad = tmp_path / "old.yaml", tmp_path / "new.yaml", tmp_path / "bad.yaml"
    old.write_text("version: 1\nsandboxes:\n  agents:\n    sources: [10.0.0.0/24]\n    allow: {hosts: [pypi.org]}\n")
    new.write_text("version: 1\nsandboxes:\n  agents:\n    sources: [10.0.0.0/24]\n    mode: report\n")
    bad.write_text("version: 1\nsandboxes:\n  agents:\n    sources: [10.0.0.0/33]\n")
    same = egress("rules", "diff", str(old), str(old))
    assert same.returncode == 0 and same.stdout == f"{old} -> {old}: no change\n"
    text = egress("rules", "diff", str(old), str(new))
    assert text.returncode == 1, text.stderr
    assert text.stdout.splitlines()[1:] == [
        "sandbox agents:", "  ~ mode: enforce -> report", "  - hosts: pypi.org (any port)"
    ]  # fmt: skip
    document = json.loads(egress("rules", "diff", "-o", "json", str(old), str(new)).stdout)
    assert [change["field"] for change in document["changes"]] == ["mode", "hosts"]
    broken = egress("rules", "diff", str(old), str(bad))
    assert broken.returncode == 2 and f"{bad}:4: sandboxes.agents.sources[0]" in broken.stderr


POLICY_ARGS = ("--policy", "rules/policy.example.yaml", "--sandbox-if", "a", "--uplink-if", "b")
GATEWAY_ARGS = (*POLICY_ARGS, "--upstream-dns", "192.0.2.53")


def _one_line_error(result: subprocess.CompletedProcess[str], flag: str) -> str:
    """The error a user sees: one line on stderr naming ``flag``, status 2, no traceback, nothing on stdout."""
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert flag in result.stderr, result.stderr
    return result.stderr


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (("nft", "render", *POLICY_ARGS, "--workers", "0"), "--workers"),
        (("nft", "render", *POLICY_ARGS, "--nflog-group", "70000"), "--nflog-group"),
        (("nft", "render", *POLICY_ARGS, "--proxy-port", "70000"), "--proxy-port"),
        (("nft", "render", *POLICY_ARGS, "--dns-port", "70000"), "--dns-port"),
        (("nft", "render", *POLICY_ARGS, "--proxy-port", "65535", "--workers", "2"), "--proxy-port"),
        (("nft", "render", *POLICY_ARGS, "--dns-port", "8082", "--workers", "4"), "--dns-port"),
        (("doctor", *GATEWAY_ARGS, "--proxy-port", "70000"), "--proxy-port"),
        (("doctor", *GATEWAY_ARGS, "--nflog-group", "-1"), "--nflog-group"),
        (("doctor", *GATEWAY_ARGS, "--redis-url", "http://x"), "--redis-url"),
        (("doctor", *GATEWAY_ARGS, "--workers", "0"), "--workers"),
        (("gateway", "run", *GATEWAY_ARGS, "--proxy-port", "65535", "--workers", "3"), "--proxy-port"),
        (("lab", "status", "--prefix", "abcdefghijklmnop"), "--prefix"),
        (("lab", "up", "--prefix", "Bad_Prefix"), "--prefix"),
        (("lab", "down", "--prefix", "abcdefghijklmnop"), "--prefix"),
        (("events", "--redis-url", "http://x"), "--redis-url"),
        (("api", "serve", "--lab", "--redis-url", "http://x"), "--redis-url"),
        (("rules", "history", "--redis-url", "http://x"), "--redis-url"),
        (("events", "--since", "nan"), "--since"),
        (("events", "--category", "bogus"), "--category"),
        (("bogus-command",), "bogus-command"),
    ],
)
def test_a_bad_option_is_one_line_naming_the_flag(args: tuple[str, ...], flag: str) -> None:
    result = egress(*args)
    assert result.stdout == ""
    _one_line_error(result, flag)


def _commands(group: click.Command, path: str = "egress") -> list[tuple[str, click.Command]]:
    """Every command under ``group``, the lazily imported ones too."""
    found = [(path, group)]
    if isinstance(group, click.Group):
        context = click.Context(group)
        for name in group.list_commands(context):
            command = group.get_command(context, name)
            assert command is not None, name
            found += _commands(command, f"{path} {name}")
    return found


def test_every_redis_url_option_is_checked_by_the_one_callback() -> None:
    taking = [
        (path, param)
        for path, command in _commands(main)
        for param in command.params
        if "--redis-url" in getattr(param, "opts", ())
    ]
    assert len(taking) >= 8, [path for path, _ in taking]
    unchecked = [path for path, param in taking if param.callback is not redis_url_callback]
    assert unchecked == []


def test_every_redis_url_option_reads_the_environment() -> None:
    """The units pass the URL (and the local Redis's password in it) through EGRESS_REDIS_URL, never on a command
    line, which every user of the host can read in /proc; a command without the envvar would take the default."""
    taking = [
        path
        for path, command in _commands(main)
        for param in command.params
        if "--redis-url" in getattr(param, "opts", ()) and getattr(param, "envvar", None) != "EGRESS_REDIS_URL"
    ]
    assert taking == []


def test_the_dns_port_message_says_what_collides() -> None:
    text = _one_line_error(egress("nft", "render", *POLICY_ARGS, "--dns-port", "8082", "--workers", "4"), "--dns-port")
    assert "8081-8084" in text and "--proxy-port" in text


def test_resolver_processes_whose_ports_meet_the_proxy_workers_are_refused() -> None:
    argv = ("gateway", "run", *GATEWAY_ARGS, "--dns-port", "8079", "--dns-processes", "3", "--proxy-port", "8081")
    text = _one_line_error(egress(*argv), "--dns-processes")
    assert "8079-8081" in text and "--proxy-port" in text


STRATUM_PCAP = ROOT / "pcaps" / "stratum_3333.pcap"


def _pcap_of(linktype: int, frames: list[bytes]) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    for second, frame in enumerate(frames, 1):
        out += struct.pack("<IIII", second, 0, len(frame), len(frame)) + frame
    return out


def _pipe(data: bytes) -> BinaryIO:
    """A pipe's reading end holding ``data`` then its end, as a shell's ``cat file |`` gives: it cannot seek."""
    read, write = os.pipe()
    with open(write, "wb") as out:
        out.write(data)  # a small capture: it fits in the pipe's buffer, no writer thread needed
    return open(read, "rb")


def test_scan_reads_a_capture_from_stdin_compressed_or_not() -> None:
    # In this process, on a real pipe (the reader must rewind what cannot seek); test_python_dash_m_egress... runs
    # the program itself.
    for data in (STRATUM_PCAP.read_bytes(), gzip.compress(STRATUM_PCAP.read_bytes())):
        with _pipe(data) as stdin:
            assert not stdin.seekable()
            result = egress("scan", "--json", "-", stdin=stdin)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout.splitlines()[0])["category"] == "mining"


def test_scan_reads_a_compressed_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "stratum.pcap.xz"
    path.write_bytes(lzma.compress(STRATUM_PCAP.read_bytes()))
    result = egress("scan", "--fail-on", "mining", str(path))
    assert result.returncode == 1, result.stderr
    assert "findings: mining 1" in result.stderr


def test_an_unknown_link_type_is_reported_per_file(tmp_path: pathlib.Path) -> None:
    odd = tmp_path / "bluetooth.pcap"
    odd.write_bytes(_pcap_of(187, [b"\x01\x02\x03\x04"] * 3))
    result = egress("scan", str(odd), str(STRATUM_PCAP))
    assert result.returncode == 2
    assert f"{odd}: 3 of link type 187 (bluetooth-hci): none of its packets could be scanned" in result.stderr
    assert "findings: mining 1" in result.stderr  # the other file is still scanned
    assert "Traceback" not in result.stderr
