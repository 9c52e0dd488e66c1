"""The reload protocol (egress.gateway.reload) without root: fake components that refuse, time out or fail to
commit, the real in-process components (resolver, drop logger, allow sets) wired as the supervisor wires them, and
a resolver that keeps answering while a large policy is parsed."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from egress.decisions import DecidedFlow
from egress.detect import dns
from egress.dnsserver.bindings import Bindings
from egress.dnsserver.resolver import Resolver, Upstream, serve
from egress.gateway.allowsets import AllowSetWriter
from egress.gateway.droplog import DropLogger
from egress.gateway.reload import (
    NftTable,
    PolicyVersion,
    Refused,
    Reloader,
    SplitReload,
    load_version,
)
from egress.gateway.supervisor import participants
from egress.nft import runner
from egress.nft.render import GatewaySettings
from egress.policy.model import Policy
from tests.lists import shipped_lists

POLICY = """version: 1
sandboxes:
  {name}:
    sources: [127.0.0.0/8]
    mode: enforce
    allow:
      hosts: [allowed.test:443]
"""
SETTINGS = GatewaySettings(sandbox_if="sbx0", uplink_if="up0")
# TODO: use tests.conftest's scaled/eventually once the testinfra branch is on main
WAIT = 30.0


def _run[T](scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(asyncio.wait_for(scenario(), 120))


def _write(path: Path, name: str) -> Path:
    path.write_text(POLICY.format(name=name))
    return path


class Fake:
    """A participant that records what it was asked, and refuses, hangs or fails when told to."""

    def __init__(self, name: str, refuse: str = "", hang: bool = False, fail_commit: bool = False) -> None:
        self.name = name
        self.refuse = refuse
        self.hang = hang
        self.fail_commit = fail_commit
        self.calls: list[tuple[str, PolicyVersion]] = []

    async def prepare(self, version: PolicyVersion) -> None:
        self.calls.append(("prepare", version))
        if self.hang:
            await asyncio.Event().wait()
        if self.refuse:
            raise Refused(self.refuse)

    async def commit(self, version: PolicyVersion) -> None:
        self.calls.append(("commit", version))
        if self.fail_commit:
            raise RuntimeError("commit failed")

    async def abort(self, version: PolicyVersion) -> None:
        self.calls.append(("abort", version))

    def steps(self) -> list[str]:
        return [step for step, _ in self.calls]


def _reloader(path: Path, *fakes: Fake, committed: list[PolicyVersion] | None = None) -> Reloader:
    current = load_version(_write(path.with_name("current.yaml"), "old"))
    sink = committed if committed is not None else []
    return Reloader(path, fakes, current, on_commit=sink.append, prepare_deadline=0.5, commit_deadline=0.5)


def test_every_component_commits_the_same_object_and_only_then_it_is_current(tmp_path: Path) -> None:
    path = _write(tmp_path / "policy.yaml", "new")
    fakes = [Fake("nftables"), Fake("resolver"), Fake("proxy-0")]
    committed: list[PolicyVersion] = []
    reloader = _reloader(path, *fakes, committed=committed)
    version = _run(reloader.reload)
    assert version is not None and version.policy.sandboxes[0].name == "new"
    assert reloader.current is version and committed == [version]
    for fake in fakes:
        assert fake.steps() == ["prepare", "commit"]
        assert all(seen is version for _, seen in fake.calls)  # one object, handed to every component


@pytest.mark.parametrize(
    ("refusing", "why"),
    [
        pytest.param(Fake("proxy-1", refuse="cannot build the gate"), "cannot build the gate", id="refuses"),
        pytest.param(Fake("proxy-1", hang=True), "no answer within 0.5 s", id="never-answers"),
    ],
)
def test_one_refusal_and_nobody_swaps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, refusing: Fake, why: str
) -> None:
    path = _write(tmp_path / "policy.yaml", "new")
    others = [Fake("nftables"), Fake("resolver"), Fake("proxy-0")]
    committed: list[PolicyVersion] = []
    reloader = _reloader(path, others[0], others[1], refusing, others[2], committed=committed)
    old = reloader.current
    with caplog.at_level(logging.ERROR, logger="egress.gateway"):
        assert _run(reloader.reload) is None
    assert reloader.current is old and committed == []
    for fake in [*others, refusing]:
        assert "commit" not in fake.steps(), fake.name
        assert fake.steps()[-1] == "abort", fake.name
    [line] = [record.getMessage() for record in caplog.records]
    assert f"refused by proxy-1: {why}" in line and old.label in line  # one loud line: who, why, what stays


def test_a_table_that_fails_to_apply_changes_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _write(tmp_path / "policy.yaml", "new")
    checked: list[str] = []

    def apply(script: str) -> None:
        raise runner.NftError("nft -f - failed", "Error: Could not process rule")

    table = NftTable(SETTINGS, apply=apply, check=checked.append)
    others = [Fake("resolver"), Fake("proxy-0")]
    reloader = _reloader(path, table, *others)  # type: ignore[arg-type]
    old = reloader.current
    with caplog.at_level(logging.ERROR, logger="egress.gateway"):
        assert _run(reloader.reload) is None
    assert reloader.current is old
    assert len(checked) == 1  # checked at prepare, refused by the kernel at commit
    for fake in others:
        assert fake.steps() == ["prepare", "abort"]
    assert "refused by nftables" in caplog.text and "Could not process rule" in caplog.text


def test_a_table_nft_rejects_at_check_is_a_refusal(tmp_path: Path) -> None:
    def check(script: str) -> None:
        raise runner.NftError("nft -c -f - failed", "Error: syntax error")

    applied: list[str] = []
    table = NftTable(SETTINGS, apply=applied.append, check=check)
    resolver = Fake("resolver")
    reloader = _reloader(_write(tmp_path / "policy.yaml", "new"), table, resolver)  # type: ignore[arg-type]
    assert _run(reloader.reload) is None
    assert applied == [] and resolver.steps() == ["prepare", "abort"]


def test_a_reload_that_puts_two_sandboxes_behind_the_sandbox_interface_is_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The loader sees only the interfaces a policy names: one sandbox naming --sandbox-if's interface and one
    naming none share that link, which the start's pre-flight refuses; a reload must too (`egress.policy.links`),
    leaving the running policy in force."""
    path = tmp_path / "policy.yaml"
    path.write_text(
        POLICY.format(name="one")
        + """    interface: sbx0
  two:
    sources: [10.9.0.0/24]
    allow:
      hosts: [allowed.test:443]
"""
    )
    applied: list[str] = []
    table = NftTable(SETTINGS, apply=applied.append, check=lambda script: None)
    resolver = Fake("resolver")
    reloader = _reloader(path, table, resolver)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="egress.gateway"):
        assert _run(reloader.reload) is None
    assert applied == [] and resolver.steps() == ["prepare", "abort"]
    assert reloader.current.policy.sandboxes[0].name == "old"
    said = " ".join(record.getMessage() for record in caplog.records)
    assert "sandboxes.one.interface: behind interface 'sbx0' (--sandbox-if)" in said, said


def test_a_commit_that_fails_after_the_table_was_applied_is_a_split(tmp_path: Path) -> None:
    path = _write(tmp_path / "policy.yaml", "new")
    reloader = _reloader(path, Fake("nftables"), Fake("resolver"), Fake("proxy-0", fail_commit=True))
    with pytest.raises(SplitReload, match=r"not committed by proxy-0 \(RuntimeError: commit failed\)"):
        _run(reloader.reload)


def test_a_file_that_does_not_validate_reaches_no_component(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(name="new") + "surprise: true\n")
    fake = Fake("resolver")
    reloader = _reloader(path, fake)
    with caplog.at_level(logging.ERROR, logger="egress.gateway"):
        assert _run(reloader.reload) is None
    assert fake.calls == []
    assert "policy reload rejected" in caplog.text and "surprise" in caplog.text


def test_a_bad_host_expect_is_refused_with_its_place_and_the_running_rules_stay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Red team 6's host-rule ``expect``: a value outside the vocabulary is a reload refused before any component
    is asked (the running policy stays in force), its message naming the file, the line and the field."""
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(name="new").replace("[allowed.test:443]", "[{host: git.test, expect: [sftp]}]"))
    fake = Fake("resolver")
    reloader = _reloader(path, fake)
    with caplog.at_level(logging.ERROR, logger="egress.gateway"):
        assert _run(reloader.reload) is None
    assert fake.calls == []
    assert f"{path}:7: sandboxes.new.allow.hosts[0].expect[0]: 'sftp' is not one of" in caplog.text


def test_the_version_is_the_hash_of_the_bytes_read(tmp_path: Path) -> None:
    path = _write(tmp_path / "policy.yaml", "new")
    first = load_version(path)
    assert first.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert first.label == f"sha256:{first.digest[:16]}"
    path.write_text(path.read_text() + "# a comment changes the bytes, not the rules\n")
    assert load_version(path).digest != first.digest


def test_requests_during_a_reload_become_one_more_reload(tmp_path: Path) -> None:
    path = _write(tmp_path / "policy.yaml", "new")
    entered, release = threading.Event(), threading.Event()
    loads: list[str] = []

    def load(where: str | Path) -> PolicyVersion:
        version = load_version(where)
        loads.append(version.policy.sandboxes[0].name)
        entered.set()
        assert release.wait(WAIT)
        return version

    fake = Fake("resolver")
    reloader = _reloader(path, fake)
    reloader.load = load

    async def scenario() -> None:
        serving = asyncio.create_task(reloader.serve())
        reloader.request()
        await asyncio.to_thread(entered.wait, WAIT)
        entered.clear()
        _write(path, "newest")  # edited again while the first reload reads...
        for _ in range(3):
            reloader.request()  # ...and signalled three more times
        release.set()
        await asyncio.to_thread(entered.wait, WAIT)
        while reloader.current.policy.sandboxes[0].name != "newest":
            await asyncio.sleep(0.01)
        serving.cancel()

    _run(scenario)
    assert loads == ["new", "newest"]
    assert fake.steps() == ["prepare", "commit", "prepare", "commit"]


class _Reporter:
    def __init__(self) -> None:
        self.reported: list[DecidedFlow] = []

    def report(self, attempt: DecidedFlow) -> None:
        self.reported.append(attempt)


def test_the_real_in_process_components_get_the_very_object(tmp_path: Path) -> None:
    old = load_version(_write(tmp_path / "old.yaml", "old"))
    lists = shipped_lists()
    reporter = _Reporter()
    bindings = Bindings(tmp_path / "bindings.db")
    allow_sets = AllowSetWriter("egress", old.policy)
    resolver = Resolver(old.policy, Upstream("127.0.0.1"), bindings, reporter, lists, on_answer=allow_sets)
    drops = DropLogger(7, old.policy, lists, reporter)  # not started: no nflog needed
    applied: list[str] = []
    table = NftTable(SETTINGS, apply=applied.append, check=lambda script: None)
    path = _write(tmp_path / "policy.yaml", "renamed")
    try:
        reloader = Reloader(path, participants(table, resolver, drops, allow_sets, []), old)
        version = _run(reloader.reload)
    finally:
        allow_sets.close()
        bindings.close()
    assert version is not None
    assert resolver.policy is version.policy
    assert drops.policy is version.policy and drops.judge.policy is version.policy
    assert allow_sets.policy is version.policy
    assert len(applied) == 1 and "renamed" in applied[0]  # the table, rendered from the same object


def _large_policy(path: Path, hosts: int) -> Path:
    lines = "\n".join(f"        - h{index}.example.org:443" for index in range(hosts))
    path.write_text(POLICY.format(name="big").replace("hosts: [allowed.test:443]", "hosts:\n" + lines))
    return path


def test_the_resolver_answers_while_a_large_policy_is_parsed(tmp_path: Path) -> None:
    """The query is sent once the parse has begun; the parse step does not return until the answer came (or a
    deadline passed). Parsed on the event loop, the answer could only come after the step: the order says which."""
    old = load_version(_write(tmp_path / "old.yaml", "big"))
    path = _large_policy(tmp_path / "policy.yaml", 30_000)
    assert path.stat().st_size > 900_000
    reporter = _Reporter()
    bindings = Bindings(tmp_path / "bindings.db")
    resolver = Resolver(old.policy, Upstream("127.0.0.1", 9), bindings, reporter, shipped_lists())
    started, answered = threading.Event(), threading.Event()
    order: list[str] = []

    def load(where: str | Path) -> PolicyVersion:
        started.set()
        version = load_version(where)  # the real parse of the large file
        answered.wait(WAIT)
        order.append("parse step returned")
        return version

    def ask(port: int) -> None:
        assert started.wait(WAIT)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(WAIT * 2)
            client.sendto(dns.build_query(7, "not-allowed.test", 1), ("127.0.0.1", port))
            rcode = dns.parse(client.recv(4096)).rcode
        order.append(f"answered rcode {rcode}")
        answered.set()

    async def scenario() -> PolicyVersion | None:
        handles = await serve(resolver, ["127.0.0.1"], 0)
        port = handles[0].get_extra_info("sockname")[1]  # type: ignore[attr-defined]
        reloader = Reloader(path, [Fake("resolver")], old, load=load)
        asker = asyncio.create_task(asyncio.to_thread(ask, port))
        version = await reloader.reload()
        await asker
        for handle in handles:
            handle.close()  # type: ignore[attr-defined]
        return version

    try:
        version = _run(scenario)
    finally:
        bindings.close()
    assert order == ["answered rcode 5", "parse step returned"]  # REFUSED, while the parse step ran
    assert version is not None and len(version.policy.sandboxes[0].hosts) == 30_000


def test_the_table_s_default_commit_keeps_the_drop_counters(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reload replaces the table through `runner.replace_table` (the counting sets kept), not a whole `apply`."""
    replaced: list[tuple[str, str]] = []
    monkeypatch.setattr(runner, "replace_table", lambda script, table, netns=None: replaced.append((script, table)))
    monkeypatch.setattr(runner, "apply", lambda script, netns=None: pytest.fail("the table was replaced whole"))
    table = NftTable(SETTINGS, check=lambda script: None)
    version = PolicyVersion(Policy(1, ()), "00" * 32)
    asyncio.run(table.prepare(version))
    asyncio.run(table.commit(version))
    assert [t for _, t in replaced] == [SETTINGS.table]
