"""The supervisor's in-process components as supervised parts (egress.gateway.components): the resolver's probe
over its real socket on loopback (alive, hung by the test-only hook, restarted), the probes kept out of the
records, and the drop logger's and recorder's liveness."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, ClassVar, cast

import pytest

from egress.decide import decide_unknown_source
from egress.decisions import DecidedFlow
from egress.detect import dns
from egress.dnsserver.bindings import Bindings
from egress.dnsserver.resolver import Resolver, Upstream
from egress.gateway.components import (
    PROBE_NAME,
    DropLoggerPart,
    ProbeFilter,
    RecorderPart,
    ResolverPart,
    UdpGatePart,
    fault_hook,
    probe_query,
)
from egress.gateway.droplog import DropLogger
from egress.gateway.recorder import RecordReporter
from egress.gateway.reload import load_version
from tests.lists import shipped_lists
from tests.ports import free_port
from tests.redis_server import RedisFactory
from tests.waiting import scaled

POLICY = """version: 1
sandboxes:
  agent:
    sources: [10.0.0.0/8]
    mode: enforce
"""


class Collected:
    def __init__(self) -> None:
        self.reported: list[DecidedFlow] = []

    def report(self, attempt: DecidedFlow) -> None:
        self.reported.append(attempt)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _run[T](scenario: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(asyncio.wait_for(scenario(), 60))


def _attempt(src: str, host: str) -> DecidedFlow:
    return DecidedFlow(0.0, "", src, 4000, "10.0.0.1", 53, "udp", host, decide_unknown_source(src))


def test_the_probe_is_a_standard_query_for_the_probe_name() -> None:
    message = dns.parse_partial(probe_query(0x1234))
    assert message is not None and message.id == 0x1234
    assert [question.name for question in message.questions] == [PROBE_NAME]


def test_only_the_supervisors_own_probes_are_kept_out_of_the_records() -> None:
    collected = Collected()
    reporter = ProbeFilter(collected)
    reporter.report(_attempt("127.0.0.1", PROBE_NAME))
    reporter.report(_attempt("::1", PROBE_NAME))
    reporter.report(_attempt("10.0.0.5", PROBE_NAME))  # a sandbox asking for the same name is recorded
    reporter.report(_attempt("127.0.0.1", "example.com"))
    assert [(a.src, a.host) for a in collected.reported] == [("10.0.0.5", PROBE_NAME), ("127.0.0.1", "example.com")]


def test_the_resolver_answers_its_probe_is_noticed_hung_and_comes_back_after_a_restart(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    policy = load_version(tmp_path / "policy.yaml").policy
    lists = shipped_lists()
    bindings = Bindings(tmp_path / "bindings.db")
    collected = Collected()
    reporter = ProbeFilter(collected)
    clock = Clock()
    built: list[Resolver] = []

    def build() -> Resolver:
        built.append(Resolver(policy, Upstream("127.0.0.1", 9), bindings, reporter, lists))
        return built[-1]

    part = ResolverPart(
        build, free_port(host="0.0.0.0", udp=True), clock, probe_wait=scaled(0.25)
    )  # a hung one is waited on twice

    async def scenario() -> None:
        assert await part.check() == "not running"
        await part.start()
        try:
            assert await part.check() is None
            assert part.answers.ever  # a real answer came (a refusal: loopback is no sandbox)
            part.hang()
            clock.now += 5
            assert await part.check() is None  # silent, not yet for long
            clock.now += 6
            problem = await part.check()
            assert problem is not None and "no answer to a probe query" in problem
            await part.restart()
            assert len(built) == 2
            assert await part.check() is None
        finally:
            part.close()

    try:
        _run(scenario)
    finally:
        bindings.close()
    assert collected.reported == []  # the probes are not decisions about a sandbox


class _FakeReader:
    def __init__(self) -> None:
        self.open = True

    def fileno(self) -> int:
        if not self.open:
            raise RuntimeError("reader is not open")
        return 5


class _FakeDrops:
    """What DropLoggerPart reads of a DropLogger: its thread and its nflog reader."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.reader: _FakeReader | None = None

    def start(self, on_death: Callable[[str], None]) -> None:
        self.reader = _FakeReader()
        self._thread = threading.Thread(target=self.stopping.wait, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(5)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


def test_the_drop_logger_is_alive_while_its_thread_runs_with_its_socket_open() -> None:
    made: list[_FakeDrops] = []

    def build() -> DropLogger:
        made.append(_FakeDrops())
        return cast(DropLogger, made[-1])

    part = DropLoggerPart(build, lambda why: None)

    async def scenario() -> None:
        assert await part.check() == "not running"
        part.start()
        assert await part.check() is None
        assert made[0].reader is not None
        made[0].reader.open = False
        assert await part.check() == "its nflog socket is closed"
        made[0].stop()
        assert await part.check() == "its thread is not running"
        await part.restart()
        assert len(made) == 2 and await part.check() is None
        part.stop()

    _run(scenario)


def test_a_recorder_whose_thread_died_is_restarted_and_writes_what_it_held(
    redis_factory: RedisFactory, tmp_path: Path
) -> None:
    server = redis_factory.server()
    recorder = RecordReporter(server.url, "gw1", str(tmp_path / "spool"), "gateway")
    part = RecorderPart(recorder)
    held = DecidedFlow(1_700_000_000.0, "agents", "10.9.9.9", 1, "192.0.2.1", 80, "tcp", "", decide_unknown_source("x"))

    async def scenario() -> None:
        assert await part.check() is None
        part.die()
        await _until(lambda: not recorder.alive)
        assert await part.check() == "its thread is not running"
        recorder.report(held)  # while it is dead: queued, not lost
        await part.restart()
        assert await part.check() is None

    try:
        _run(scenario)
        assert recorder.flush()
        records, _ = recorder.store.read("agents", count=10)
        assert [record.dst for record in records] == ["192.0.2.1"]
    finally:
        recorder.close()
        recorder.store.close()
        redis_factory.discard(server)


async def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "not yet"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("value", "method"),
    [("1", "hang"), ("resolver", "hang"), ("drop-logger", "die"), ("recorder", "die"), ("udp-gate", "die")],
)
def test_the_fault_hook_is_what_the_variable_names(value: str, method: str) -> None:
    resolver = cast(ResolverPart, _Hooks("resolver"))
    drops = cast(DropLoggerPart, _Hooks("drop logger"))
    recorder = cast(RecorderPart, _Hooks("recorder"))
    udp = cast(UdpGatePart, _Hooks("udp gate"))
    hook = fault_hook(value, resolver, drops, recorder, udp)
    assert hook is not None
    hook()
    expected = {"1": "resolver", "resolver": "resolver", "drop-logger": "drop logger", "recorder": "recorder",
                "udp-gate": "udp gate"}  # fmt: skip
    assert _Hooks.called == [(expected[value], method)]


def test_no_fault_hook_unless_asked_and_an_unknown_one_is_refused() -> None:
    parts = [cast(Any, _Hooks(name)) for name in ("resolver", "drop logger", "recorder")]
    assert fault_hook("", *parts) is None
    with pytest.raises(ValueError, match="EGRESS_FAULT_HOOKS='worker'"):
        fault_hook("worker", *parts)


class _Hooks:
    called: ClassVar[list[tuple[str, str]]] = []

    def __init__(self, name: str) -> None:
        self.name = name
        _Hooks.called.clear()

    def hang(self) -> None:
        _Hooks.called.append((self.name, "hang"))

    def die(self) -> None:
        _Hooks.called.append((self.name, "die"))
