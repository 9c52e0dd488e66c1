"""The fleet policy follower (egress.gateway.policy_follow): two gateways' followers on one real redis-server,
each applying through its own `Reloader` with the real in-process components (resolver, drop logger, allow sets)
and an nftables table whose kernel side is injected; and a SIGHUP whose table the kernel refuses."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from egress.decisions import DecidedFlow
from egress.dnsserver.bindings import Bindings
from egress.dnsserver.resolver import Resolver, Upstream
from egress.gateway.allowsets import AllowSetWriter
from egress.gateway.droplog import DropLogger
from egress.gateway.policy_follow import PolicyFollower
from egress.gateway.reload import NftTable, Reloader, load_version, parse_version
from egress.gateway.supervisor import participants
from egress.nft import runner
from egress.nft.render import GatewaySettings
from egress.record.policy_store import GatewayReport, PolicyHistory
from egress.record.redis_facade import RedisFacade
from tests.lists import shipped_lists
from tests.redis_server import RedisServer

POLICY = """version: 1
sandboxes:
  {name}:
    sources: [{source}]
    mode: enforce
    allow:
      hosts: [allowed.test:443]
"""
REFUSED = "kernelrefuses"
"""A sandbox whose table the injected kernel refuses. The issue's example of a policy that validated and then
failed at apply was an IPv6 zone id (``fe80::1%vlan42/128``); `egress rules check` now refuses that one, so these
tests do not depend on what check lets through: the failure is injected at the nft layer."""
SETTINGS = GatewaySettings(sandbox_if="sbx0", uplink_if="up0")


def _text(name: str, source: str = "10.0.0.0/8") -> str:
    return POLICY.format(name=name, source=source)


def _run[T](scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(asyncio.wait_for(scenario(), 120))


class _Reporter:
    def report(self, attempt: DecidedFlow) -> None:
        pass


def _kernel_apply(applied: list[str]) -> Callable[[str], None]:
    """nft's apply, as the kernel would answer a table it cannot take (the zone id's real error); anything else goes
    in."""

    def apply(script: str) -> None:
        if REFUSED in script:
            raise runner.NftError("nft -f - failed (exit 1)", "Error: syntax error, unexpected junk")
        applied.append(script)

    return apply


@dataclass
class Gateway:
    """One gateway's reload machinery as the supervisor wires it, minus sockets and the kernel."""

    name: str
    resolver: Resolver
    drops: DropLogger
    allow_sets: AllowSetWriter
    reloader: Reloader
    follower: PolicyFollower
    applied: list[str]

    def policies(self) -> set[int]:
        """The identities of the policy objects every component holds (one when they agree)."""
        current = self.reloader.current.policy
        held = [self.resolver.policy, self.drops.policy, self.drops.judge.policy, self.allow_sets.policy, current]
        return {id(policy) for policy in held}


@pytest.fixture
def gateways(tmp_path: Path, redis_server: RedisServer) -> Iterator[Callable[[str], Gateway]]:
    redis_server.flush()
    lists = shipped_lists()  # rules/lists, read-only: loaded once per process
    closing: list[Callable[[], None]] = []

    def make(name: str) -> Gateway:
        boot = tmp_path / f"{name}.yaml"
        boot.write_text(_text("boot"))
        old = load_version(boot)
        bindings = Bindings(tmp_path / f"{name}-bindings.db")
        allow_sets = AllowSetWriter("egress", old.policy)
        resolver = Resolver(old.policy, Upstream("127.0.0.1"), bindings, _Reporter(), lists, on_answer=allow_sets)
        drops = DropLogger(7, old.policy, lists, _Reporter())  # not started: no nflog needed
        applied: list[str] = []
        table = NftTable(SETTINGS, apply=_kernel_apply(applied), check=lambda script: None)
        history = PolicyHistory.from_url(redis_server.url)
        reloader = Reloader(boot, participants(table, resolver, drops, allow_sets, []), old)
        follower = PolicyFollower(history, name, reloader, interval=0.01)
        reloader.on_commit = follower.committed  # as the supervisor's `committed` hands it on
        closing.extend([allow_sets.close, bindings.close, history.close])
        return Gateway(name, resolver, drops, allow_sets, reloader, follower, applied)

    yield make
    for close in closing:
        close()


def _apply(history: PolicyHistory, text: str) -> int:
    return history.record(text, hashlib.sha256(text.encode()).hexdigest(), "test", "test.yaml").version


def _reports(gateway: Gateway) -> dict[str, GatewayReport]:
    return {report.gateway: report for report in gateway.follower.history.gateways()}


def test_two_gateways_reach_each_new_version_and_say_so(gateways: Callable[[str], Gateway]) -> None:
    one, two = gateways("gw-1"), gateways("gw-2")
    history = one.follower.history
    for round_, name in enumerate(["first", "second"], start=1):
        number = _apply(history, _text(name))
        for gateway in (one, two):
            _run(gateway.follower.step)
            assert gateway.reloader.current.policy.sandboxes[0].name == name
            assert len(gateway.policies()) == 1  # every component holds the one object
            assert len(gateway.applied) == round_ and name in gateway.applied[-1]
        digest = hashlib.sha256(_text(name).encode()).hexdigest()
        assert _reports(one) == {
            gw.name: GatewayReport(gw.name, "applied", digest, number, _reports(one)[gw.name].time, wanted=number)
            for gw in (one, two)
        }
    _run(one.follower.step)  # nothing new: nothing applied again
    assert len(one.applied) == 2


def test_a_version_the_kernel_refuses_changes_nothing_and_is_reported(gateways: Callable[[str], Gateway]) -> None:
    gateway = gateways("gw-1")
    history = gateway.follower.history
    good = _apply(history, _text("good"))
    _run(gateway.follower.step)
    before = gateway.reloader.current
    bad = _apply(history, _text(REFUSED))
    _run(gateway.follower.step)
    assert gateway.reloader.current is before and gateway.policies() == {id(before.policy)}
    assert gateway.drops.policy is before.policy  # the drop logger too
    report = _reports(gateway)["gw-1"]
    assert (report.state, report.version, report.wanted, report.digest) == ("failed", good, bad, before.digest)
    assert "nftables" in report.error and "syntax error" in report.error
    _run(gateway.follower.step)  # the refused version is not tried again on every poll...
    assert len(gateway.applied) == 1
    fixed = _apply(history, _text("fixed"))  # ...but the next one is
    _run(gateway.follower.step)
    assert gateway.reloader.current.policy.sandboxes[0].name == "fixed"
    assert _reports(gateway)["gw-1"].state == "applied" and _reports(gateway)["gw-1"].version == fixed


def test_a_refused_version_is_tried_again_later(gateways: Callable[[str], Gateway]) -> None:
    """A refusal may pass (the gateway was locked down while a component restarted): not retried on every poll,
    but after `retry_refused` seconds of the injected clock."""
    gateway = gateways("gw-1")
    now = [1000.0]
    gateway.follower._clock = lambda: now[0]
    table = gateway.reloader.participants[0]
    assert isinstance(table, NftTable)
    kernel, refusals = table._apply, list[str]()

    def locked_once(script: str) -> None:
        if not refusals:
            refusals.append(script)
            raise runner.NftError("the gateway is locked down (proxy-0: dead)")
        kernel(script)

    table._apply = locked_once
    number = _apply(gateway.follower.history, _text("later"))
    _run(gateway.follower.step)
    assert _reports(gateway)["gw-1"].state == "failed" and len(refusals) == 1
    now[0] += gateway.follower.retry_refused - 1
    _run(gateway.follower.step)
    assert gateway.applied == []  # not yet
    now[0] += 1
    _run(gateway.follower.step)
    assert gateway.reloader.current.policy.sandboxes[0].name == "later"
    report = _reports(gateway)["gw-1"]
    assert (report.state, report.version) == ("applied", number)


def test_a_text_that_does_not_validate_reaches_no_component(gateways: Callable[[str], Gateway]) -> None:
    gateway = gateways("gw-1")
    before = gateway.reloader.current
    _apply(gateway.follower.history, _text("x") + "surprise: true\n")  # written past the CLI's validation
    _run(gateway.follower.step)
    assert gateway.reloader.current is before and gateway.applied == []
    report = _reports(gateway)["gw-1"]
    assert report.state == "failed" and "surprise" in report.error


def test_sighup_is_a_local_override_until_the_next_fleet_version(
    gateways: Callable[[str], Gateway], tmp_path: Path
) -> None:
    gateway = gateways("gw-1")
    history = gateway.follower.history
    _apply(history, _text("fleet"))
    _run(gateway.follower.step)
    (tmp_path / "gw-1.yaml").write_text(_text("local"))
    assert _run(gateway.reloader.reload) is not None  # what SIGHUP runs
    _run(gateway.follower.step)
    assert gateway.reloader.current.policy.sandboxes[0].name == "local"  # the fleet's version is not forced back
    report = _reports(gateway)["gw-1"]
    assert report.state == "local" and report.version is None
    _apply(history, _text("fleet2"))
    _run(gateway.follower.step)
    assert gateway.reloader.current.policy.sandboxes[0].name == "fleet2"


def test_a_boot_file_that_is_the_fleet_version_is_reported_as_it(gateways: Callable[[str], Gateway]) -> None:
    gateway = gateways("gw-1")
    number = _apply(gateway.follower.history, _text("boot"))
    _run(gateway.follower.step)
    assert gateway.applied == []  # already running it: nothing to apply
    report = _reports(gateway)["gw-1"]
    assert (report.state, report.version) == ("applied", number)


def test_redis_away_changes_nothing_and_the_report_follows_later(
    gateways: Callable[[str], Gateway], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    gateway = gateways("gw-1")
    reachable = gateway.follower.history
    gateway.follower.history = PolicyHistory(RedisFacade(f"unix://{tmp_path}/nobody.sock"))
    before = gateway.reloader.current
    with caplog.at_level(logging.WARNING, logger="egress.gateway"):
        for _ in range(3):
            _run(gateway.follower.step)
    assert gateway.reloader.current is before
    assert caplog.text.count("not readable") == 1  # the outage logged once
    gateway.follower.committed(load_version(tmp_path / "gw-1.yaml"))  # a local reload while Redis was away
    gateway.follower.history = reachable
    _run(gateway.follower.step)
    assert _reports(gateway)["gw-1"].state == "local"


def test_run_polls_every_interval(gateways: Callable[[str], Gateway]) -> None:
    gateway = gateways("gw-1")
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 3:
            raise asyncio.CancelledError

    gateway.follower._sleep = sleep
    _apply(gateway.follower.history, _text("fleet"))
    with pytest.raises(asyncio.CancelledError):
        _run(gateway.follower.run)
    assert slept == [0.01] * 3
    assert gateway.reloader.current.policy.sandboxes[0].name == "fleet"


def test_sighup_with_a_table_the_kernel_refuses_leaves_every_component_on_the_old_policy(
    gateways: Callable[[str], Gateway], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's case: the file validates, nft's apply fails. Not "Exception in callback": the resolver, the
    drop logger and the allow sets stay on the old object and one line says why."""
    gateway = gateways("gw-1")
    before = gateway.reloader.current
    (tmp_path / "gw-1.yaml").write_text(_text(REFUSED))
    parse_version(_text(REFUSED), "check")  # the loader accepts it: the failure is the kernel's

    async def sighup() -> None:
        serving = asyncio.create_task(gateway.reloader.serve())
        gateway.reloader.request()
        while "refused" not in caplog.text:
            await asyncio.sleep(0.01)
        serving.cancel()

    with caplog.at_level(logging.INFO):
        _run(sighup)
    assert gateway.reloader.current is before and gateway.policies() == {id(before.policy)}
    assert gateway.applied == []
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "refused by nftables" in line and "syntax error" in line and before.label in line
    assert "Exception in callback" not in caplog.text and "Traceback" not in caplog.text
