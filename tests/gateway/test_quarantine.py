"""`egress.gateway.quarantine.Keeper` without the kernel: a fake store (Redis up or down), the table as a list of
what it was made to hold, the webhook as a list of calls, clocks injected; and the tap's datagrams for real."""

from __future__ import annotations

import asyncio
import dataclasses
import pathlib

import pytest

from egress.decide import Enforcement, Reason, Verdict
from egress.decisions import DecidedFlow
from egress.detect.base import Category, Finding
from egress.gateway.qtap import FindingTap, Tapped
from egress.gateway.quarantine import Keeper
from egress.policy.model import Mode, Policy, Quarantine
from egress.record.quarantine_store import Entry
from tests.nft import make_sandbox
from tests.waiting import eventually

RULE = Quarantine(after=3, within=60, categories=frozenset({"mining"}), webhook="http://127.0.0.1:9/hook")
POLICY = Policy(1, (dataclasses.replace(make_sandbox("agent", "10.0.0.0/24"), quarantine=RULE),))


class Down(OSError):
    pass


class FakeStore:
    def __init__(self) -> None:
        self.up = True
        self.hits: dict[str, int] = {}
        self.active_entries: dict[str, Entry] = {}

    def _check(self) -> None:
        if not self.up:
            raise Down("redis is down")

    def hit(self, sandbox: str, caller: str, suffixes: list[str], window: float) -> int:
        self._check()
        self.hits[sandbox] = self.hits.get(sandbox, 0) + len(suffixes)
        return self.hits[sandbox]

    def quarantine(self, entry: Entry) -> bool:
        self._check()
        return self.active_entries.setdefault(entry.sandbox, entry) is entry

    def active(self) -> dict[str, Entry]:
        self._check()
        return dict(self.active_entries)


class Hooks:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, object]]] = []

    def call(self, url: str, body: dict[str, object]) -> None:
        self.calls.append((url, body))

    def close(self) -> None:
        pass


class Table:
    def __init__(self) -> None:
        self.applied: list[frozenset[str]] = []

    def __call__(self, names: frozenset[str]) -> None:
        self.applied.append(names)


def _keeper(tmp_path: pathlib.Path, store: FakeStore | None, policy: Policy = POLICY) -> tuple[Keeper, Table, Hooks]:
    table, hooks = Table(), Hooks()
    keeper = Keeper(
        str(tmp_path / "q.sock"), str(tmp_path / "q.json"), "gw1", lambda: policy, table, store,  # type: ignore[arg-type]
        hooks,  # type: ignore[arg-type]
        clock=lambda: 1000.0, monotonic=lambda: 5.0,
    )  # fmt: skip
    return keeper, table, hooks


def test_the_third_finding_cuts_off_once_and_calls_the_webhook_once(tmp_path: pathlib.Path) -> None:
    store = FakeStore()
    keeper, table, hooks = _keeper(tmp_path, store)
    keeper.note(Tapped("agent", "mining", 2))
    assert keeper.quarantined() == frozenset() and table.applied == []
    keeper.note(Tapped("agent", "mining", 1))
    assert keeper.quarantined() == {"agent"} and table.applied == [frozenset({"agent"})]
    assert [url for url, _ in hooks.calls] == [RULE.webhook]
    assert hooks.calls[0][1]["sandbox"] == "agent" and hooks.calls[0][1]["event"] == "quarantine"
    assert set(store.active_entries) == {"agent"}
    keeper.note(Tapped("agent", "mining", 5))  # already cut off: nothing more
    assert len(hooks.calls) == 1 and len(table.applied) == 1


def test_other_categories_and_report_mode_do_not_count(tmp_path: pathlib.Path) -> None:
    keeper, _, _ = _keeper(tmp_path, FakeStore())
    keeper.note(Tapped("agent", "tunnel", 10))
    keeper.note(Tapped("nobody", "mining", 10))
    assert keeper.quarantined() == frozenset()
    report = Policy(1, (dataclasses.replace(POLICY.sandboxes[0], mode=Mode.REPORT),))
    (tmp_path / "r").mkdir()
    keeper, _, _ = _keeper(tmp_path / "r", FakeStore(), report)
    keeper.note(Tapped("agent", "mining", 10))
    assert keeper.quarantined() == frozenset()


def test_the_fleet_count_trips_before_the_local_one(tmp_path: pathlib.Path) -> None:
    store = FakeStore()
    store.hits["agent"] = 2  # two findings seen by other gateways
    keeper, _, hooks = _keeper(tmp_path, store)
    keeper.note(Tapped("agent", "mining", 1))
    assert keeper.quarantined() == {"agent"} and len(hooks.calls) == 1


def test_redis_down_still_quarantines_and_pushes_it_later(tmp_path: pathlib.Path) -> None:
    store = FakeStore()
    store.up = False
    keeper, table, hooks = _keeper(tmp_path, store)
    keeper.note(Tapped("agent", "mining", 3))
    assert keeper.quarantined() == {"agent"} and table.applied == [frozenset({"agent"})]
    assert len(hooks.calls) == 1  # on its own: it calls
    keeper.sync()  # still down: kept
    assert keeper.quarantined() == {"agent"} and store.active_entries == {}
    store.up = True
    keeper.sync()
    assert set(store.active_entries) == {"agent"} and keeper.quarantined() == {"agent"}


def test_a_release_in_redis_lets_go_and_another_gateways_quarantine_applies(tmp_path: pathlib.Path) -> None:
    store = FakeStore()
    keeper, _, _ = _keeper(tmp_path, store)
    keeper.note(Tapped("agent", "mining", 3))
    keeper.sync()
    del store.active_entries["agent"]  # egress quarantine release
    keeper.sync()
    assert keeper.quarantined() == frozenset()
    store.active_entries["other"] = Entry("other", 1.0, "gw2", "3 findings", 3)
    keeper.sync()
    assert keeper.quarantined() == {"other"}


def test_the_state_survives_a_restart_without_redis(tmp_path: pathlib.Path) -> None:
    keeper, _, _ = _keeper(tmp_path, None)
    keeper.note(Tapped("agent", "mining", 3))
    again, _, _ = _keeper(tmp_path, None)
    assert again.quarantined() == {"agent"}
    assert again.entries["agent"].gateway == "gw1"


def test_a_failed_apply_is_tried_again(tmp_path: pathlib.Path) -> None:
    keeper, table, _ = _keeper(tmp_path, None)
    failures = [RuntimeError("locked down")]

    def flaky(names: frozenset[str]) -> None:
        if failures:
            raise failures.pop()
        table(names)

    keeper.apply = flaky
    keeper.note(Tapped("agent", "mining", 3))
    assert table.applied == []
    keeper._enforce()
    assert table.applied == [frozenset({"agent"})]


def _mining(sandbox: str = "agent") -> DecidedFlow:
    finding = Finding(Category.MINING, "stratum-v1", "stratum", "mining.subscribe")
    verdict = Verdict(Enforcement.BLOCK, Reason.MINING, "rule", "evidence", finding)
    return DecidedFlow(1.0, sandbox, "10.0.0.2", 4000, "198.18.10.3", 3333, "tcp", "", verdict)


def test_the_tap_reaches_the_keeper_over_its_socket(tmp_path: pathlib.Path) -> None:
    keeper, table, _ = _keeper(tmp_path, None)
    tap = FindingTap(keeper.socket_path)
    tap.report(_mining())  # no keeper yet: owed
    assert tap.owed == 1
    keeper.start()
    try:
        tap.report(_mining())
        tap.report(_mining())
        assert tap.owed == 0
        eventually(lambda: keeper.quarantined() == {"agent"}, timeout=30)
        eventually(lambda: table.applied[-1:] == [frozenset({"agent"})], timeout=30)
    finally:
        keeper.stop()
        tap.close()


@pytest.mark.parametrize("data", [b"", b"[]", b"{}", b'{"sandbox": "a", "category": "mining", "count": 0}', b"\xff"])
def test_unreadable_datagrams_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        Tapped.decode(data)


@pytest.mark.parametrize("text", ["{", "[]", '{"entries": [{"sandbox": "a"}]}', '{"entries": 3}'])
def test_an_unreadable_state_file_leaves_redis_to_say(tmp_path: pathlib.Path, text: str) -> None:
    (tmp_path / "q.json").write_text(text)
    keeper, _, _ = _keeper(tmp_path, None)
    assert keeper.quarantined() == frozenset()


def test_a_stopped_keeper_is_not_alive_and_restarts(tmp_path: pathlib.Path) -> None:
    keeper, table, _ = _keeper(tmp_path, None)
    keeper.start()
    try:
        assert asyncio.run(keeper.check()) is None
        keeper._halt()
        assert asyncio.run(keeper.check()) == "its thread is not running"
        asyncio.run(keeper.restart())
        assert asyncio.run(keeper.check()) is None
        tap = FindingTap(keeper.socket_path)
        for _ in range(3):
            tap.report(_mining())
        tap.close()
        eventually(lambda: table.applied[-1:] == [frozenset({"agent"})], timeout=30)
    finally:
        keeper.stop()
