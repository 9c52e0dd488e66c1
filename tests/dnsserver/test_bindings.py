"""The bindings file: one writer, readers in other processes, expiry by TTL."""

from __future__ import annotations

import pathlib
import subprocess
import sys

from egress.dnsserver.bindings import MIN_TTL, REFRESH, Bindings


def test_bound_names_expire_with_their_ttl(tmp_path: pathlib.Path) -> None:
    store = Bindings(tmp_path / "b.db")
    store.bind("agents", "pypi.org", [("198.18.10.1", 300), ("2001:db8:10::1", 300)], now=1000.0)
    assert store.names_for("agents", "198.18.10.1", now=1001.0) == {"pypi.org"}
    assert store.is_bound("agents", "pypi.org", "2001:db8:10::1", now=1001.0)
    assert not store.is_bound("other", "pypi.org", "198.18.10.1", now=1001.0)
    assert store.names_for("agents", "198.18.10.1", now=1300.5) == frozenset()
    assert store.purge(now=1300.5) == 2


def test_zero_ttl_is_raised_to_the_minimum(tmp_path: pathlib.Path) -> None:
    store = Bindings(tmp_path / "b.db")
    store.bind("agents", "a.example", [("192.0.2.1", 0)], now=0.0)
    assert store.is_bound("agents", "a.example", "192.0.2.1", now=MIN_TTL - 1)
    assert not store.is_bound("agents", "a.example", "192.0.2.1", now=MIN_TTL + 1)


def test_a_longer_ttl_is_never_shortened_by_a_later_answer(tmp_path: pathlib.Path) -> None:
    store = Bindings(tmp_path / "b.db")
    store.bind("agents", "a.example", [("192.0.2.1", 600)], now=0.0)
    store.bind("agents", "a.example", [("192.0.2.1", 60)], now=10.0)
    assert store.is_bound("agents", "a.example", "192.0.2.1", now=500.0)


def test_another_process_sees_what_was_written(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "b.db"
    Bindings(path).bind("agents", "pool.example", [("203.0.113.5", 3600)])
    reader = (
        "import sys; from egress.dnsserver.bindings import Bindings; "
        "print(sorted(Bindings(sys.argv[1]).names_for('agents', '203.0.113.5')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", reader, str(path)], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.stdout.strip() == "['pool.example']", result.stderr


def test_a_write_that_would_move_an_expiry_by_less_than_refresh_is_skipped(tmp_path: pathlib.Path) -> None:
    bindings = Bindings(tmp_path / "b.db")
    bindings.bind("agent", "a.lab", [("198.51.100.1", 60)], now=0.0)
    bindings.bind("agent", "a.lab", [("198.51.100.1", 60)], now=REFRESH / 2)  # skipped: the row says 60
    assert not bindings.is_bound("agent", "a.lab", "198.51.100.1", now=60.0 + REFRESH / 4)
    bindings.bind("agent", "a.lab", [("198.51.100.1", 60)], now=REFRESH)  # far enough: written
    assert bindings.is_bound("agent", "a.lab", "198.51.100.1", now=60.0 + REFRESH / 2)
    bindings.clear()
    bindings.bind("agent", "a.lab", [("198.51.100.1", 60)], now=REFRESH)  # after a clear, written again
    assert bindings.is_bound("agent", "a.lab", "198.51.100.1", now=60.0)
    bindings.bind("other", "a.lab", [("198.51.100.1", 60)], now=REFRESH)  # another sandbox: its own row
    assert bindings.is_bound("other", "a.lab", "198.51.100.1", now=60.0)
    bindings.close()


def _queries(store: Bindings) -> list[str]:
    """The statements ``store``'s connection runs from now on."""
    seen: list[str] = []
    store._db.set_trace_callback(seen.append)
    return seen


def test_a_reader_keeps_an_answer_until_a_commit_or_an_expiry(tmp_path: pathlib.Path) -> None:
    """The proxy asks twice per connection: an answer is kept, and a write by another handle (the resolver), a
    name's expiry or a time before the kept lookup's is seen at once, as without keeping."""
    path = tmp_path / "b.db"
    writer, reader = Bindings(path), Bindings(path)
    writer.bind("agents", "a.example", [("192.0.2.1", 100)], now=1000.0)
    queries = _queries(reader)
    assert reader.names_for("agents", "192.0.2.1", now=1001.0) == {"a.example"}
    assert reader.names_for("agents", "192.0.2.1", now=1002.0) == {"a.example"}
    assert reader.names_for("agents", "192.0.2.1", now=1002.0) == {"a.example"}
    assert len(queries) == 2, queries  # the first answer was a query to map the -shm file after; then kept
    writer.bind("agents", "b.example", [("192.0.2.1", 500)], now=1003.0)  # another handle commits
    assert reader.names_for("agents", "192.0.2.1", now=1004.0) == {"a.example", "b.example"}
    assert reader.names_for("agents", "192.0.2.1", now=1099.0) == {"a.example", "b.example"}
    assert reader.names_for("agents", "192.0.2.1", now=1100.5) == {"b.example"}  # a.example expired at 1100
    assert reader.names_for("agents", "192.0.2.1", now=1050.0) == {"a.example", "b.example"}  # before: asked again
    writer.clear()
    assert reader.names_for("agents", "192.0.2.1", now=1101.0) == frozenset()
    writer.close()
    reader.close()


def test_a_reader_sees_another_process_write_after_keeping_an_answer(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "b.db"
    reader = Bindings(path)
    Bindings(path).bind("agents", "a.example", [("203.0.113.5", 3600)])
    assert reader.names_for("agents", "203.0.113.5") == {"a.example"}
    assert reader.names_for("agents", "203.0.113.5") == {"a.example"}  # kept
    writer = (
        "import sys; from egress.dnsserver.bindings import Bindings; "
        "Bindings(sys.argv[1]).bind('agents', 'b.example', [('203.0.113.5', 3600)])"
    )
    done = subprocess.run(
        [sys.executable, "-c", writer, str(path)], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert reader.names_for("agents", "203.0.113.5") == {"a.example", "b.example"}
    reader.close()
