"""Who handles a TLS connection to a host rule's bound name (issue 9): the front, which watches its shape, takes
every passthrough, recorded ones too (a detector set to ``record``, report mode's would-block); mitmproxy, which
cannot watch it, gets only TLS it must decrypt and TLS the front could not judge (a hello after `PEEK_WAIT` or
bigger than its peek, an error in the front), and refuses the latter (tests/proxy/mitm/test_addon.py).

On loopback with real sockets and the real gate, as tests/proxy/test_front.py."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import pytest

from egress.decide import Enforcement, Reason
from egress.detect.names import make_name_detector
from egress.detect.registry import stream_detectors
from egress.policy.loader import parse_policy
from egress.policy.model import Sandbox
from egress.proxy import front as front_module
from egress.proxy.front import Front
from egress.proxy.gate import Decision, Gate, flow_meta
from tests.lists import shipped_lists
from tests.ports import free_port
from tests.proxy import ORIGIN_ON_LOOPBACK
from tests.proxy.test_front import (
    SSH_IN_TLS,
    _client_hello,
    _hello_padded,
    _Reporter,
    _run,
    scripted_tls_client,
    scripted_tls_server,
)
from tests.waiting import eventually_async, scaled

POOL_NAME = "supportxmr.com"
"""On the shipped pool list (rules/lists/pool-domains.yaml): TLS naming it is a ``mining``/``pool-domain`` finding."""

POLICY = """
version: 1
sandboxes:
  box:
    sources: [127.0.0.0/8]
    mode: {mode}
    allow:
      hosts:
        - {{host: allowed.test, ports: [{port}]}}
        - {{host: {pool}, ports: [{port}]}}
        - {{host: decrypted.test, ports: [{port}]}}
    decrypt: [decrypted.test]
    detectors: {{mining: {mining}}}
"""


@pytest.fixture(autouse=True)
def patient_peek(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in tests/proxy/test_front.py: a loaded machine must not hand a connection off for the wrong reason."""
    monkeypatch.setattr(front_module, "PEEK_WAIT", scaled(60))


class _Setup:
    """A front on a free loopback port; ``handed``: what each connection handed to "mitmproxy" carried."""

    def __init__(self, upstream_port: int, mode: str = "enforce", mining: str = "block") -> None:
        policy = parse_policy(POLICY.format(mode=mode, port=upstream_port, pool=POOL_NAME, mining=mining))
        lists = shipped_lists()
        bound = frozenset({"allowed.test", POOL_NAME, "decrypted.test"})

        def names_for(sandbox: str, address: str) -> frozenset[str]:
            return bound if (sandbox, address) == ("box", "127.0.0.1") else frozenset()

        self.gate = Gate(
            policy, names_for, make_name_detector(lists), stream_detectors(lists), this_host=ORIGIN_ON_LOOPBACK
        )
        self.reporter = _Reporter()
        self.handed: list[bytes] = []
        self.front = Front(self.gate, self.reporter, self._handoff, destination=lambda _: ("127.0.0.1", upstream_port))
        self.port = 0
        self.task: asyncio.Task[None] | None = None

    async def _handoff(self, conn: socket.socket, _peer: tuple[str, int]) -> None:
        reader, writer = await asyncio.open_connection(sock=conn)
        got = b""
        while chunk := await reader.read(65536):
            got += chunk
        self.handed.append(got)
        writer.close()

    async def serve(self) -> None:
        self.port = free_port()
        task = self.task = asyncio.create_task(self.front.serve(self.port, hosts=("127.0.0.1",)))

        async def listening() -> bool:
            assert not task.done(), task
            assert self.front._listeners, "the front does not listen yet"
            return True

        await eventually_async(listening, timeout=10)

    async def handed_off(self) -> None:
        async def handed() -> bool:
            assert self.handed, self.handed
            return True

        await eventually_async(handed, timeout=10)


async def _ssh_in_tls(setup_for: int, tmp_path: Path, sni: str, **policy: str) -> tuple[_Setup, list[int]]:
    """SSH's opening inside TLS naming ``sni``, through the front to a TLS server; the setup and the plaintext
    sizes the server received (tests/proxy/test_front.py: the watcher closes it before the first encrypted packet)."""
    script = SSH_IN_TLS[:setup_for]
    server, server_port, received, ca = await scripted_tls_server(script, tmp_path)
    setup = _Setup(server_port, **policy)
    await setup.serve()
    await scripted_tls_client(script, setup.port, ca, sni)
    assert setup.task is not None
    setup.task.cancel()
    server.close()
    return setup, received


def test_tls_naming_a_host_a_detector_records_is_relayed_and_watched_by_the_front(tmp_path: Path) -> None:
    """The case the refusal in mitmproxy would get wrong: a host rule allows a pool's name and the sandbox says
    ``mining: record``. The policy lets it through, recorded: the front takes it (mitmproxy would refuse it as
    unwatched TLS), records the name's finding, and watches the TLS (SSH inside it closes it)."""

    async def scenario() -> None:
        setup, received = await _ssh_in_tls(len(SSH_IN_TLS), tmp_path, POOL_NAME, mining="record")
        assert (setup.front.relayed, setup.front.handed_off, setup.handed) == (1, 0, [])
        assert received == [41, 1560, 1208] or received == [41, 1560, 1208, 16], "closed by the watcher"
        verdicts = [(flow.verdict.action, flow.verdict.reason, flow.host) for flow in setup.reporter.reported]
        assert verdicts == [
            (Enforcement.RECORD, Reason.MINING, POOL_NAME),  # the name, reported before the relay starts
            (Enforcement.BLOCK, Reason.TUNNEL, POOL_NAME),  # the watcher's finding
        ]
        finding = setup.reporter.reported[0].verdict.finding
        assert finding is not None and finding.protocol == "pool-domain"

    _run(scenario)


@pytest.mark.parametrize(
    "sni, expected",
    [
        ("unbound.test", (Enforcement.WOULD_BLOCK, Reason.NOT_ALLOWLISTED)),  # a name no rule allows
        (POOL_NAME, (Enforcement.WOULD_BLOCK, Reason.MINING)),  # a pool's name under mining: block
    ],
    ids=["not-allowed", "pool-name"],
)
def test_report_modes_would_block_is_relayed_and_watched_by_the_front(
    tmp_path: Path, sni: str, expected: tuple[Enforcement, Reason]
) -> None:
    """Report mode lets what enforce would block through, recorded: the front relays it through the watcher
    too (mitmproxy would pass it unwatched), so its TLS shape is recorded as well (as a would-block)."""

    async def scenario() -> None:
        setup, _ = await _ssh_in_tls(SSH_IN_TLS.index(("s", 44)) + 1, tmp_path, sni, mode="report")
        assert (setup.front.relayed, setup.front.handed_off, setup.handed) == (1, 0, [])
        verdicts = [(flow.verdict.action, flow.verdict.reason) for flow in setup.reporter.reported]
        assert verdicts[0] == expected, verdicts

        async def watched() -> bool:
            shapes = [f.verdict for f in setup.reporter.reported if f.verdict.finding is not None]
            assert any(v.finding is not None and v.finding.protocol == "ssh-in-tls" for v in shapes), shapes
            return True

        await eventually_async(watched, timeout=10)
        assert setup.front.watch_blocked == 0, "report mode closes nothing"

    _run(scenario)


def test_a_recorded_passthrough_to_a_destination_that_refuses_is_still_recorded() -> None:
    """The record comes before the dial (mitmproxy recorded it even when the dial failed)."""

    async def scenario() -> None:
        with socket.socket() as closed:  # a port with nothing listening: the dial is refused
            closed.bind(("127.0.0.1", 0))
            refusing = int(closed.getsockname()[1])
        setup = _Setup(refusing, mining="record")
        await setup.serve()
        reader, writer = await asyncio.open_connection("127.0.0.1", setup.port)
        writer.write(_client_hello(POOL_NAME))
        await writer.drain()
        with contextlib.suppress(ConnectionResetError):  # closed with the hello unread: a reset, or an end
            assert await asyncio.wait_for(reader.read(), scaled(10)) == b"", "closed: nothing to reach"
        writer.close()
        assert [(f.verdict.action, f.verdict.reason) for f in setup.reporter.reported] == [
            (Enforcement.RECORD, Reason.MINING)
        ]
        assert setup.handed == []
        assert setup.task is not None
        setup.task.cancel()

    _run(scenario)


def _fails(*_: object, **__: object) -> Decision:
    raise RuntimeError("a bug in the gate")


@pytest.mark.parametrize(
    "path",
    ["decrypt-list", "hello-over-the-peek", "hello-not-whole-in-time", "silent-past-the-peek-wait", "front-error"],
)
def test_what_the_front_leaves_to_mitmproxy(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every other way host-rule TLS reaches mitmproxy: TLS it must decrypt, and TLS the front could not judge,
    handed off with nothing read (mitmproxy refuses the latter: tests/proxy/mitm/test_addon.py)."""
    hello = _client_hello("allowed.test")
    first, late = {
        "decrypt-list": (_client_hello("decrypted.test"), b""),
        "hello-over-the-peek": (_hello_padded("allowed.test", 17_000), b""),
        "hello-not-whole-in-time": (hello[:40], hello[40:]),
        "silent-past-the-peek-wait": (b"", hello),
        "front-error": (hello, b""),
    }[path]
    if path in {"hello-not-whole-in-time", "silent-past-the-peek-wait"}:
        monkeypatch.setattr(front_module, "PEEK_WAIT", 0.05)
        monkeypatch.setattr(front_module, "HELLO_WAIT", 0.05)

    async def scenario() -> None:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        setup = _Setup(int(server.sockets[0].getsockname()[1]))
        if path == "front-error":
            monkeypatch.setattr(setup.gate, "on_first_bytes", _fails)
        await setup.serve()
        _, writer = await asyncio.open_connection("127.0.0.1", setup.port)
        writer.write(first)
        await writer.drain()
        if late:

            async def handed_off() -> bool:
                assert setup.front.handed_off == 1, "the front gave up waiting"
                return True

            await eventually_async(handed_off, timeout=10)
            writer.write(late)
        writer.close()
        await setup.handed_off()
        assert setup.handed == [first + late], "nothing read by the front"
        assert (setup.front.relayed, setup.front.handed_off, setup.reporter.reported) == (0, 1, [])
        assert setup.task is not None
        setup.task.cancel()
        server.close()

    _run(scenario)


def test_the_gate_refuses_host_rule_tls_to_a_caller_that_cannot_watch_it() -> None:
    """The pure decision behind mitmproxy's refusal: the same hello, watched (the front) or not (mitmproxy)."""
    setup = _Setup(443)
    sandbox: Sandbox = setup.gate.policy.sandboxes[0]
    meta = flow_meta(("127.0.0.1", 40000), ("127.0.0.1", 443))
    hello = _client_hello("allowed.test")
    watched = setup.gate.on_first_bytes(sandbox, meta, hello, b"", watching=True)
    unwatched = setup.gate.on_first_bytes(sandbox, meta, hello, b"", watching=False)
    assert watched.verdict is None and watched.allow is not None
    assert unwatched.verdict is not None and unwatched.verdict.finding is not None
    assert (unwatched.verdict.action, unwatched.verdict.finding.protocol) == (Enforcement.BLOCK, "tls-unwatched")
