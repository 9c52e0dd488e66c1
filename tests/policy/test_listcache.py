"""Tests for egress.policy.listcache: the scanner's name lists kept between runs, never stale, never foreign."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
from pathlib import Path

import pytest

from egress import shipped
from egress.detect.base import Category
from egress.detect.namelist import NameList
from egress.detect.names import NameLists
from egress.policy import listcache, lists
from egress.policy.problems import RulesError

LISTED = """version: 1
name: pools
category: mining
protocol: pool-domain
names: [pool.example.com, other.example.net]
addresses: ["192.0.2.7", "198.51.100.0/24", "2001:db8::/32", "2001:db8:1::1"]
"""


def _tables(found: NameLists) -> list[object]:
    """Every table of the index, in order, with the type of each key (an address is not its network)."""
    names = [[(name, hit) for name, hit in table.items()] for table in (found._suffix, found._exact, found._below)]
    hosts = [(type(key), key, hit) for key, hit in found._hosts.items()]
    return [names, hosts, [(type(net), net, hit) for net, hit in found._networks]]


def _round_trip(found: NameLists) -> NameLists:
    state = found.state()
    assert state is not None
    return NameLists.restored(json.loads(json.dumps(state)))


def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text)


def test_the_shipped_lists_restore_to_the_same_index() -> None:
    built = NameLists(lists.load_lists_dir())
    restored = _round_trip(built)
    assert _tables(restored) == _tables(built)
    loaded = lists.load_lists_dir()
    for item in loaded:
        for name in item.names:
            bare = name.removeprefix("*.")
            for asked in (bare, "a." + bare, "x" + bare, bare + ".example"):
                assert restored.match(asked) == built.match(asked)
        for network in item.addresses:
            for address in (network.network_address, network.network_address + 1):
                assert restored.match_address(str(address)) == built.match_address(str(address))


def test_every_kind_of_entry_restores() -> None:
    made = [
        NameList("a.yaml", "a", Category.MINING, "pool-domain", "suffix", "", (), ("pool.example.com",),
                 (_network("192.0.2.1/32"), _network("10.0.0.0/8"), _network("2001:db8::/32"), _network("::1/128"))),
        NameList("b.yaml", "b", Category.TUNNEL, "doh", "exact", "", (), ("dns.example.org", "*.doh.example"),
                 (_network("192.0.2.1/32"), _network("10.0.0.0/8"), _network("::ffff:192.0.2.9/128"))),
        NameList("c.yaml", "c", Category.TUNNEL, "doh", "exact", "", (), ("x.example.org",), ()),
    ]  # fmt: skip
    built = NameLists(made)
    restored = _round_trip(built)
    assert _tables(restored) == _tables(built)
    for address in ("192.0.2.1", "10.1.2.3", "2001:db8::5", "::1", "::ffff:192.0.2.9", "192.0.2.9", "11.0.0.1"):
        assert restored.match_address(address) == built.match_address(address)


def test_an_address_with_a_zone_is_not_kept() -> None:
    zoned = NameList("z.yaml", "z", Category.TUNNEL, "doh", "suffix", "", (), (), (_network("fe80::1%eth0/128"),))
    assert NameLists([zoned]).state() is None


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(listcache.CACHE_ENV, str(folder))
    return folder


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    made = tmp_path / "lists"
    made.mkdir()
    (made / "pools.yaml").write_text(LISTED)
    return made


def _loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the loads from the files (`lists.load_texts`) from now on."""
    calls: list[int] = []
    real = lists.load_texts

    def counted(*args: object) -> tuple[NameList, ...]:
        calls.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(lists, "load_texts", counted)
    return calls


def test_the_second_scan_reads_the_entry_not_the_files(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _loads(monkeypatch)
    first = listcache.name_lists()
    assert len(calls) == 1 and len(list(cache.glob("lists-*.json"))) == 1
    second = listcache.name_lists()
    assert len(calls) == 1
    assert _tables(second) == _tables(first) == _tables(lists.load_name_lists(shipped.lists_dir()))


def test_a_list_changed_is_loaded_again(cache: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _loads(monkeypatch)
    assert listcache.name_lists(folder).match("pool.example.com") is not None
    (folder / "pools.yaml").write_text(LISTED.replace("pool.example.com", "pool.example.org"))
    changed = listcache.name_lists(folder)
    assert len(calls) == 2 and len(list(cache.glob("lists-*.json"))) == 2
    assert changed.match("pool.example.com") is None and changed.match("pool.example.org") is not None
    (folder / "extra.yaml").write_text(LISTED.replace("pools", "more").replace(".example.", ".example2."))
    assert listcache.name_lists(folder).match("pool.example2.com") is not None  # a file added: another key


@pytest.mark.parametrize("source", listcache._SOURCES)
def test_the_key_holds_the_code_that_builds_the_lists(
    source: str, tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "egress"
    for name in listcache._SOURCES:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(listcache._EGRESS / name, copy / name)
    monkeypatch.setattr(listcache, "_EGRESS", copy)
    files = [(path, path.read_bytes()) for path in sorted(folder.glob("*.yaml"))]
    before = listcache.entry_for(files)
    assert listcache.entry_for(files) == before
    (copy / source).write_bytes((copy / source).read_bytes() + b"\n")
    assert listcache.entry_for(files) != before


def test_the_key_holds_each_file_s_name_and_bytes(folder: Path) -> None:
    path = folder / "pools.yaml"
    keys = {
        listcache.entry_for([(path, b"names: [a.example]")]),
        listcache.entry_for([(path, b"names: [b.example]")]),
        listcache.entry_for([(folder / "other.yaml", b"names: [a.example]")]),
        listcache.entry_for([(path, b"names: [a.example]"), (folder / "other.yaml", b"")]),
    }
    assert len(keys) == 4


def _entry(cache: Path) -> Path:
    (entry,) = cache.glob("lists-*.json")
    return entry


def test_a_damaged_entry_is_not_read(cache: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _loads(monkeypatch)
    listcache.name_lists(folder)
    entry = _entry(cache)
    digest, _, body = entry.read_bytes().partition(b"\n")
    entry.write_bytes(digest + b"\n" + body.replace(b"pool.example.com", b"pool.example.org"))
    assert listcache.name_lists(folder).match("pool.example.com") is not None
    assert len(calls) == 2


@pytest.mark.parametrize("whose", ["file", "folder"])
def test_an_entry_others_may_write_is_not_read(
    whose: str, cache: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _loads(monkeypatch)
    listcache.name_lists(folder)
    target = _entry(cache) if whose == "file" else cache
    os.chmod(target, os.stat(target).st_mode | 0o020)
    listcache.name_lists(folder)
    assert len(calls) == 2


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_an_entry_of_another_user_is_not_read(cache: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _loads(monkeypatch)
    listcache.name_lists(folder)
    os.chown(_entry(cache), 65534, -1)
    listcache.name_lists(folder)
    assert len(calls) == 2


def test_lists_with_problems_raise_every_time_and_are_not_kept(cache: Path, folder: Path) -> None:
    (folder / "bad.yaml").write_text(LISTED.replace("pools", "bad").replace("192.0.2.7", "192.0.2.300"))
    for _ in range(2):
        with pytest.raises(RulesError, match=r"192\.0\.2\.300"):
            listcache.name_lists(folder)
    assert not cache.exists() or not list(cache.iterdir())


def test_a_file_not_utf8_is_the_loader_s_problem(cache: Path, folder: Path) -> None:
    (folder / "pools.yaml").write_bytes(LISTED.encode() + b"# \xff\n")
    with pytest.raises(RulesError, match="cannot read"):
        listcache.name_lists(folder)


def test_an_empty_cache_setting_keeps_nothing(tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(listcache.CACHE_ENV, "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    calls = _loads(monkeypatch)
    for _ in range(2):
        assert listcache.name_lists(folder).match("pool.example.com") is not None
    assert len(calls) == 2 and listcache.cache_dir() is None
    assert not (tmp_path / "xdg").exists() and not (tmp_path / "home").exists()


def test_the_cache_s_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(listcache.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert listcache.cache_dir() == tmp_path / "xdg" / "egress"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert listcache.cache_dir() == tmp_path / "home" / ".cache" / "egress"


@pytest.mark.parametrize(
    "data", [b"a\nb", b"a\r\nb\r\n", b"a\rb\r", b"\xef\xbb\xbfa\r\r\n\n", "\u2028x\x85y".encode(), b""]
)
def test_text_is_read_as_the_loader_reads_it(data: bytes, tmp_path: Path) -> None:
    path = tmp_path / "one.yaml"
    path.write_bytes(data)
    assert listcache._text(data) == path.read_text(encoding="utf-8")


def test_missing_folders_are_made_private(tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deep = tmp_path / "home" / ".cache" / "egress"
    monkeypatch.setenv(listcache.CACHE_ENV, str(deep))
    listcache.name_lists(folder)
    assert len(list(deep.glob("lists-*.json"))) == 1
    assert all(os.stat(made).st_mode & 0o777 == 0o700 for made in (deep, deep.parent, deep.parent.parent))


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a folder to another user needs root")
def test_no_folder_is_made_in_another_user_s(tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, 65534, -1)
    monkeypatch.setenv(listcache.CACHE_ENV, str(home / ".cache" / "egress"))
    assert listcache.name_lists(folder).match("pool.example.com") is not None
    assert not (home / ".cache").exists()


def test_the_last_entries_are_kept(cache: Path, folder: Path) -> None:
    names = []
    for count in range(listcache.KEPT + 2):
        (folder / "pools.yaml").write_text(LISTED.replace("pool.example.com", f"pool{count}.example.com"))
        listcache.name_lists(folder)
        names.append(listcache.entry_for([(folder / "pools.yaml", (folder / "pools.yaml").read_bytes())]))
        seconds = (count + 1) * 1_000_000_000  # written in this order, whatever the clock's grain
        os.utime(cache / names[-1], ns=(seconds, seconds))
    assert sorted(path.name for path in cache.glob("lists-*.json")) == sorted(names[-listcache.KEPT :])
