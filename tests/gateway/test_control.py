"""The control channel (egress.gateway.control) over a real socket pair, and the worker process's side of it
(egress.gateway.worker.serve, with the proxy itself replaced): the only way a worker gets its policy."""

from __future__ import annotations

import asyncio
import gc
import pickle
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from egress.decisions import Reporter
from egress.flowlog import FlowSink
from egress.gateway import worker as worker_module
from egress.gateway.config import WorkerConfig
from egress.gateway.control import Kind, Payloads, Reply, WorkerControl, WorkerLink, open_stream, socket_pair
from egress.gateway.reload import PolicyVersion, Refused, load_version
from egress.proxy.gate import Gate
from egress.proxy.idle import IdleBound
from egress.proxy.openflows import OpenFlows
from egress.replay import Kind as Asked
from egress.replay import Question

POLICY = """version: 1
sandboxes:
  {name}:
    sources: [10.0.0.0/8]
    mode: enforce
"""


def _run[T](scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(asyncio.wait_for(scenario(), 60))


def _version(tmp_path: Path, name: str) -> PolicyVersion:
    path = tmp_path / f"{name}.yaml"
    path.write_text(POLICY.format(name=name))
    return load_version(path)


class _Pair:
    """A link and the worker-side control it talks to, both in this event loop."""

    def __init__(self) -> None:
        self.committed: list[PolicyVersion] = []
        mine, theirs = socket_pair()
        self.link = WorkerLink("proxy-0", mine, Payloads())
        self.control = WorkerControl("proxy-0", self.committed.append)
        self._theirs = theirs
        self.serving: asyncio.Task[None] | None = None

    async def start(self) -> None:
        reader, writer = await open_stream(self._theirs)
        self.serving = asyncio.create_task(self.control.serve(reader, writer))

    async def stop(self) -> None:
        self.link.close()
        assert self.serving is not None
        await self.serving  # the worker side ends when the supervisor's end closes


def test_a_worker_runs_what_the_supervisor_prepared_and_committed(tmp_path: Path) -> None:
    first, second = _version(tmp_path, "first"), _version(tmp_path, "second")

    async def scenario() -> None:
        pair = _Pair()
        await pair.start()
        for version in (first, second):
            await pair.link.prepare(version)
            assert pair.committed == [] or pair.committed[-1].digest != version.digest  # prepared, not swapped
            await pair.link.commit(version)
            assert await pair.link.status() == version.digest
        await pair.stop()
        assert [v.digest for v in pair.committed] == [first.digest, second.digest]
        assert pair.committed[-1] == second  # the validated object itself, across the process boundary
        assert pair.committed[-1].policy.sandboxes[0].name == "second"

    _run(scenario)


def test_abort_drops_what_was_prepared(tmp_path: Path) -> None:
    first, second = _version(tmp_path, "first"), _version(tmp_path, "second")

    async def scenario() -> None:
        pair = _Pair()
        await pair.start()
        await pair.link.prepare(first)
        await pair.link.commit(first)
        await pair.link.prepare(second)
        await pair.link.abort(second)
        with pytest.raises(RuntimeError, match="was not prepared"):
            await pair.link.commit(second)
        assert await pair.link.status() == first.digest
        await pair.stop()

    _run(scenario)


def test_what_is_not_a_policy_version_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        pair = _Pair()
        await pair.start()
        garbled = await pair.link._ask(Kind.PREPARE, b"not a pickle")
        assert not garbled.ok and "cannot read the policy" in garbled.reason
        other = await pair.link._ask(Kind.PREPARE, pickle.dumps({"version": 1}))
        assert not other.ok and "not a policy version: dict" in other.reason
        assert pair.control.prepared is None and pair.committed == []
        await pair.stop()

    _run(scenario)


def test_an_answer_that_comes_after_its_request_gave_up_is_skipped(tmp_path: Path) -> None:
    first, second = _version(tmp_path, "first"), _version(tmp_path, "second")

    async def scenario() -> None:
        pair = _Pair()
        with pytest.raises(TimeoutError):  # nobody answers yet
            await asyncio.wait_for(pair.link.prepare(first), 0.05)
        await pair.start()  # now the worker answers the stale request, then the next
        await pair.link.prepare(second)
        await pair.link.commit(second)
        assert await pair.link.status() == second.digest
        await pair.stop()

    _run(scenario)


def test_each_version_is_pickled_once_for_every_worker(tmp_path: Path) -> None:
    version = _version(tmp_path, "first")

    async def scenario() -> None:
        payloads = Payloads()
        first, again = await payloads.get(version), await payloads.get(version)
        assert first is again
        assert pickle.loads(first) == version

    _run(scenario)


def test_a_cut_aborts_what_the_worker_holds_and_answers_how_many() -> None:
    """The lockdown's CUT: the worker's ``on_cut`` gets the reason; the count comes back. A worker with nothing
    to cut (still starting) answers 0; one whose cut fails says so, and the supervisor's side raises."""

    async def scenario() -> None:
        pair, told = _Pair(), []

        def cut(why: str) -> int:
            told.append(why)
            return 3

        pair.control.on_cut = cut
        await pair.start()
        assert await pair.link.cut("lockdown") == 3 and told == ["lockdown"]
        pair.control.on_cut = None
        assert await pair.link.cut("lockdown") == 0

        def broken(why: str) -> int:
            raise OSError("cannot")

        pair.control.on_cut = broken
        with pytest.raises(RuntimeError, match="cut failed: OSError: cannot"):
            await pair.link.cut("lockdown")
        assert await pair.link.status() == ""  # the channel still answers in order
        await pair.stop()

    _run(scenario)


def test_a_cut_left_unanswered_raises_on_the_supervisor_side() -> None:
    async def scenario() -> None:
        pair = _Pair()  # never started: nobody answers
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pair.link.cut("lockdown"), 0.05)
        pair.link.close()

    _run(scenario)


class _Refusing(WorkerControl):
    def prepare(self, seq: int, version: object) -> Reply:
        return Reply(seq, False, reason="cannot build the gate")


def test_a_refusal_from_the_worker_reaches_the_supervisor(tmp_path: Path) -> None:
    version = _version(tmp_path, "first")

    async def scenario() -> None:
        pair = _Pair()
        pair.control = _Refusing("proxy-0", pair.committed.append)
        await pair.start()
        with pytest.raises(Refused, match="cannot build the gate"):
            await pair.link.prepare(version)
        await pair.stop()
        assert pair.committed == []

    _run(scenario)


class _FakeProxy:
    """Stands in for `run_worker`: remembers the gate it was given and runs until cancelled."""

    def __init__(self) -> None:
        self.gates: list[Gate] = []
        self.idle_timeouts: list[float | None] = []
        """What each run was given for mitmproxy's idle timeout (the worker passes its setting on)."""
        self.open_flows: list[OpenFlows | None] = []
        """Where each run keeps the connections it let through (a lockdown's CUT closes them all)."""

    async def __call__(
        self,
        gate: Gate,
        reporter: Reporter,
        port: int,
        confdir: str,
        upstream_ca: str | None,
        open_flows: OpenFlows | None = None,
        flows: FlowSink | None = None,
        idle: IdleBound | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        self.gates.append(gate)
        self.idle_timeouts.append(idle_timeout)
        self.open_flows.append(open_flows)
        await asyncio.Event().wait()


def test_the_worker_process_proxies_only_once_it_has_a_policy_and_stops_with_its_supervisor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = _version(tmp_path, "first"), _version(tmp_path, "second")
    proxy = _FakeProxy()
    monkeypatch.setattr(worker_module, "run_worker", proxy)
    config = WorkerConfig(
        index=0,
        port=0,
        confdir=str(tmp_path / "ca"),
        bindings_path=str(tmp_path / "bindings.db"),
        lists_dir=None,
        upstream_ca=None,
        redis_url="redis://127.0.0.1:1/0",  # nothing listens: records go to the spool
        gateway="test",
        spool_dir=str(tmp_path / "spool"),
        idle_timeout=42.0,
    )

    async def scenario() -> None:
        mine, theirs = socket_pair()
        link = WorkerLink(config.name, mine, Payloads())
        worker = asyncio.create_task(worker_module.serve(config, theirs.detach()))
        await asyncio.sleep(0)
        assert proxy.gates == []  # nothing is served before the first policy
        await link.prepare(first)
        await link.commit(first)
        while not proxy.gates:
            await asyncio.sleep(0.01)
        [gate] = proxy.gates
        assert gate.policy == first.policy
        assert proxy.idle_timeouts == [42.0]  # the worker's setting reaches mitmproxy's run
        await link.prepare(second)
        await link.commit(second)
        assert gate.policy == second.policy  # swapped in the gate the proxy runs with
        [flows] = proxy.open_flows
        assert flows is not None
        closed: list[str] = []
        flows.add(Question(Asked.TLS, "10.0.0.5", "203.0.113.1", 443, "kept.example"), lambda: closed.append("tls"))
        assert await link.cut("lockdown") == 1  # the lockdown: the proxy's open connections aborted
        assert closed == ["tls"] and len(flows) == 0
        link.close()
        await worker  # the supervisor's end closed: the worker stops (and flushes its records)

    _run(scenario)


def test_a_worker_needs_its_control_channel(capsys: pytest.CaptureFixture[str]) -> None:
    # In-process: the argument parser refuses before anything runs (a subprocess would import mitmproxy again
    # only to print this; tests/gateway/test_supervisor_workers.py runs the real command line).
    with pytest.raises(SystemExit) as exited:
        worker_module.main(["--config", "worker-0.json"])
    assert exited.value.code == 2
    assert "--control" in capsys.readouterr().err


def test_the_supervisor_end_is_not_inherited_and_the_worker_end_is() -> None:
    mine, theirs = socket_pair()
    with mine, theirs:
        assert not mine.get_inheritable() and theirs.get_inheritable()
        assert mine.family == socket.AF_UNIX


def test_a_received_policy_has_its_lookups_built_in_the_receiving_thread(tmp_path: Path) -> None:
    """The worker unpickles a PREPARE and builds the policy's lookups in the same worker thread (issue 12): the
    first connection after the commit must not build them for 100,000 rules on the event loop."""
    from egress.gateway.control import _received

    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nsandboxes:\n  a:\n    sources: [10.0.0.0/24]\n    allow: {hosts: [pypi.org]}\n")
    version = load_version(path)
    assert all(sandbox._index is not None for sandbox in version.policy.sandboxes)  # the supervisor's: built
    received = _received(pickle.dumps(version, pickle.HIGHEST_PROTOCOL))
    assert isinstance(received, PolicyVersion) and received == version
    assert all(sandbox._index is not None for sandbox in received.policy.sandboxes)
    assert received.policy.sandboxes[0].name_allowed("pypi.org") == version.policy.sandboxes[0].hosts[0]


def test_a_version_with_its_payload_goes_to_the_workers_as_the_validating_child_pickled_it(tmp_path: Path) -> None:
    """The supervisor pickles nothing when the child did (issue 12: pickling 100,000 rules held its interpreter
    lock ~100 ms at a time, and the resolver waited)."""
    version = _version(tmp_path, "first")
    payload = pickle.dumps(version, pickle.HIGHEST_PROTOCOL)
    carried = PolicyVersion(version.policy, version.digest, payload)

    async def scenario() -> None:
        assert await Payloads().get(carried) is payload

    _run(scenario)


def test_a_received_policy_is_frozen_out_of_the_workers_collections(tmp_path: Path) -> None:
    from egress.gateway.control import _received

    try:
        received = _received(pickle.dumps(_version(tmp_path, "first"), pickle.HIGHEST_PROTOCOL))
        assert isinstance(received, PolicyVersion)
        assert gc.isenabled()
        assert gc.is_tracked(received.policy) and not any(thing is received.policy for thing in gc.get_objects())
    finally:
        gc.unfreeze()
