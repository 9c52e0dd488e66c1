"""`egress.gateway.workers.DnsWorkerSlot`: a resolver process past the first is alive only while it runs, answers
its pings (as a proxy worker) and answers a real DNS probe on its own port; silent for `ANSWER_DEADLINE`, it is
down (the supervisor's lockdown and restart follow, as for any component)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from egress.gateway.config import GatewayConfig
from egress.gateway.control import Payloads
from egress.gateway.liveness import ANSWER_DEADLINE
from egress.gateway.reload import load_version
from egress.gateway.workers import DnsWorkerSlot, WorkerSlot

POLICY = "version: 1\nsandboxes:\n  agent:\n    sources: [10.0.0.0/8]\n"


def _slot(tmp_path: Path, answers: list[bool], clock: list[float]) -> tuple[DnsWorkerSlot, list[int]]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    version = load_version(str(policy))
    config = GatewayConfig(str(policy), "sbx0", "up0", "192.0.2.53", state_dir=str(tmp_path), dns_processes=2)
    asked: list[int] = []

    async def ask(port: int) -> bool:
        asked.append(port)
        return answers.pop(0)

    slot = DnsWorkerSlot(config, 1, Payloads(), lambda: version, ask, clock=lambda: clock[0])
    return slot, asked


def test_the_slot_runs_the_resolver_process_with_its_own_config(tmp_path: Path) -> None:
    slot, _asked = _slot(tmp_path, [], [0.0])
    assert (slot.module, slot.name, slot.worker.port) == ("egress.gateway.dnsworker", "resolver-1", 5354)
    assert slot.path == tmp_path / "resolver-1.json" and slot.path.stat().st_mode & 0o777 == 0o600


def test_a_resolver_process_that_answers_pings_but_no_query_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def pinged(self: WorkerSlot) -> str | None:
        return None  # the process runs and its control channel answers

    monkeypatch.setattr(WorkerSlot, "check", pinged)
    clock = [0.0]
    slot, asked = _slot(tmp_path, [True, False, False], clock)
    slot.serving = True

    async def checks() -> list[str | None]:
        found = [await slot.check()]  # answered
        clock[0] = ANSWER_DEADLINE / 2
        found.append(await slot.check())  # silent, not for long
        clock[0] = ANSWER_DEADLINE + 1
        found.append(await slot.check())  # silent past the deadline
        return found

    first, second, third = asyncio.run(checks())
    assert (first, second) == (None, None)
    assert third is not None and "port 5354" in third
    assert asked == [5354, 5354, 5354]


def test_a_dead_process_is_down_whatever_the_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def exited(self: WorkerSlot) -> str | None:
        return "pid 1 exited with -9"

    monkeypatch.setattr(WorkerSlot, "check", exited)
    slot, asked = _slot(tmp_path, [True], [0.0])
    slot.serving = True
    assert asyncio.run(slot.check()) == "pid 1 exited with -9"
    assert asked == []
