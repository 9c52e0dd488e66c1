"""Tests for egress.policy.lists: one fixture per failure mode of a name-list file, and the shipped lists."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from egress.detect.base import Category
from egress.policy.lists import RulesError, load_lists

RULES = Path(__file__).resolve().parents[2] / "rules" / "lists"

GOOD = """\
version: 1
name: pools
category: mining
protocol: pool-domain
description: test pools
notes: none
sources:
  - {repository: ntop/nDPI, path: example/mining_hosts.txt, commit: "3b12", snapshot: "2018-04-24"}
names:
  - nanopool.org
  - eu1.example.com
addresses:
  - 192.0.2.1
  - 2001:db8::/32
"""


def write(tmp_path: Path, text: str, name: str = "list.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(RulesError) as caught:
        load_lists([write(tmp_path, text)])
    return [f"{p.line}: {p.message}" for p in caught.value.problems]


def test_good_file(tmp_path: Path) -> None:
    (loaded,) = load_lists([write(tmp_path, GOOD)])
    assert loaded.name == "pools"
    assert loaded.category is Category.MINING
    assert loaded.protocol == "pool-domain"
    assert loaded.match == "suffix"
    assert loaded.names == ("nanopool.org", "eu1.example.com")
    assert loaded.addresses == (ipaddress.ip_network("192.0.2.1/32"), ipaddress.ip_network("2001:db8::/32"))
    assert loaded.sources[0].repository == "ntop/nDPI"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GOOD.replace("version: 1\n", ""), ["1: missing required key 'version'"]),
        (GOOD.replace("version: 1", "version: 2"), ["1: version must be 1, got '2'"]),
        (GOOD.replace("version: 1", 'version: "1"'), ["1: version must be 1, got '1'"]),
        (GOOD.replace("notes: none", "note: none"), ["6: unknown key 'note' in the file"]),
        (GOOD.replace("category: mining", "category: evil"), ["3: category 'evil' is not one of"]),
        (GOOD.replace("name: pools", "name: Pools_List"), ["2: name 'Pools_List' must be kebab-case"]),
        (GOOD.replace("  - nanopool.org", "  - Nanopool.org"), ["10: bad name 'Nanopool.org'"]),
        (GOOD.replace("  - nanopool.org", "  - org"), ["10: bad name 'org'"]),
        (GOOD.replace("  - nanopool.org", "  - nanopool.org."), ["10: bad name 'nanopool.org.'"]),
        (GOOD.replace("  - nanopool.org", "  - '*.nanopool.org'"), ["10: bad name '*.nanopool.org'"]),
        (GOOD.replace("  - eu1.example.com", "  - nanopool.org"), ["11: duplicate name 'nanopool.org' (first on line 10)"]),  # noqa: E501
        (GOOD.replace("  - nanopool.org", "  - 12"), ["10: a name must be a string"]),
        (GOOD.replace("  - 192.0.2.1", "  - 192.0.2.300"), ["13: bad address '192.0.2.300'"]),
        (GOOD.replace("  - 192.0.2.1", "  - 192.0.2.1/24"), ["13: bad address '192.0.2.1/24'"]),
        (GOOD.replace("  - 2001:db8::/32", "  - 192.0.2.1"), ["14: duplicate address '192.0.2.1' (first on line 13)"]),
        (GOOD.replace("names:\n  - nanopool.org\n  - eu1.example.com", "names: nanopool.org"), ["9: names must be a list"]),  # noqa: E501
        (GOOD.replace(', snapshot: "2018-04-24"', ""), ["8: source is missing 'snapshot'"]),
        (GOOD.replace("protocol: pool-domain", "protocol: pool-domain\nmatch: fuzzy"), ["5: match 'fuzzy' is not one of"]),  # noqa: E501
        (GOOD.replace("name: pools", "name: pools\nname: again"), ["3: duplicate key 'name' in the file"]),
        ("- just\n- a list\n", ["1: the file must be a mapping"]),
        ("", ["1: empty file"]),
        ("version: [1\n", ["2: not valid YAML"]),
    ],
    ids=[
        "missing-version", "wrong-version", "version-string", "unknown-key", "bad-category", "bad-list-name",
        "uppercase-name", "single-label", "trailing-dot", "wildcard-in-suffix-list", "duplicate-name",
        "name-wrong-type", "bad-address", "host-bits-set", "duplicate-address", "names-not-a-list",
        "source-missing-key", "bad-match", "duplicate-key", "not-a-mapping", "empty", "not-yaml",
    ],
)  # fmt: skip
def test_each_failure_mode(tmp_path: Path, text: str, expected: list[str]) -> None:
    found = problems(tmp_path, text)
    assert len(found) == len(expected), found
    for got, want in zip(found, expected, strict=True):
        assert got.startswith(want), found


def test_every_problem_reported_at_once_with_file_and_line(tmp_path: Path) -> None:
    bad = (
        GOOD.replace("version: 1", "version: 3")
        .replace("notes: none", "extra: 1")
        .replace("  - eu1.example.com", "  - EU1")
    )
    with pytest.raises(RulesError) as caught:
        load_lists([write(tmp_path, bad, "a.yaml"), write(tmp_path, "version: 1\n", "b.yaml")])
    text = str(caught.value)
    assert f"{tmp_path / 'a.yaml'}:1: version must be 1" in text
    assert f"{tmp_path / 'a.yaml'}:6: unknown key 'extra'" in text
    assert f"{tmp_path / 'a.yaml'}:11: bad name 'EU1'" in text
    assert f"{tmp_path / 'b.yaml'}:1: missing required key 'name'" in text
    assert len(caught.value.problems) == 6  # b.yaml also lacks category and protocol
    assert [p.line for p in caught.value.problems[:3]] == [1, 6, 11]  # in line order


def test_exact_lists_take_wildcards(tmp_path: Path) -> None:
    text = GOOD.replace("protocol: pool-domain", "protocol: doh\nmatch: exact").replace(
        "nanopool.org", "'*.nextdns.io'"
    )
    (loaded,) = load_lists([write(tmp_path, text)])
    assert loaded.match == "exact"
    assert loaded.names[0] == "*.nextdns.io"


def test_same_name_in_two_files(tmp_path: Path) -> None:
    first = write(tmp_path, GOOD, "a.yaml")
    second = write(
        tmp_path,
        GOOD.replace("name: pools", "name: more").replace("addresses:\n  - 192.0.2.1\n  - 2001:db8::/32\n", ""),
        "b.yaml",
    )
    with pytest.raises(RulesError) as caught:
        load_lists([first, second])
    assert [p.line for p in caught.value.problems] == [10, 11]
    assert "also listed in" in caught.value.problems[0].message


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read"):
        load_lists([tmp_path / "missing.yaml"])


def test_shipped_lists_load() -> None:
    loaded = {item.name: item for item in load_lists(sorted(RULES.glob("*.yaml")))}
    assert set(loaded) == {"pool-domains", "doh", "reverse-tunnels", "vpn-services"}
    assert loaded["pool-domains"].category is Category.MINING
    assert loaded["doh"].category is Category.TUNNEL and loaded["doh"].match == "exact"
    assert len(loaded["pool-domains"].names) > 500
    assert len(loaded["doh"].addresses) > 1000
    for item in loaded.values():
        assert item.sources or item.name == "reverse-tunnels"
        assert all(len(source.commit) == 40 for source in item.sources)
