"""The proxy worker's front (egress.proxy.front) on loopback with real sockets and the real gate: allowed TLS is
relayed by the front itself, byte for byte; everything else reaches the handoff with nothing read from it.

Only where a connection was going is given (`Front(destination=...)`): behind the gateway that is nftables'
SO_ORIGINAL_DST, which the end-to-end tests exercise."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from egress.decide import Enforcement, Reason
from egress.decisions import DecidedFlow
from egress.detect import miningshape, tlsshape
from egress.detect.base import Category, Finding
from egress.detect.names import make_name_detector
from egress.detect.registry import stream_detectors
from egress.lab import certs
from egress.policy.loader import parse_policy
from egress.policy.model import Policy
from egress.proxy import front as front_module
from egress.proxy.front import Front
from egress.proxy.gate import Gate
from egress.proxy.poller import front_loop
from egress.proxy.splice import Relay
from tests.lists import shipped_lists
from tests.ports import free_port
from tests.proxy import ORIGIN_ON_LOOPBACK
from tests.waiting import eventually_async, scaled


@pytest.fixture(autouse=True)
def patient_peek(monkeypatch: pytest.MonkeyPatch) -> None:
    """The front waits `PEEK_WAIT` (0.1 s) for a client's first bytes; a busy machine can take longer than that
    between connect and send, which would hand the connection off for the wrong reason. Here it waits as long as a
    test may take; the test of the wait itself sets its own."""
    monkeypatch.setattr(front_module, "PEEK_WAIT", scaled(60))


class _Reporter:
    def __init__(self) -> None:
        self.reported: list[DecidedFlow] = []

    def report(self, attempt: DecidedFlow) -> None:
        self.reported.append(attempt)


def _client_hello(name: str) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def _records(data: bytes, size: int = 16 * 1024) -> bytes:
    """``data`` as TLS application-data records (RFC 8446 §5.1): what a TLS client sends after its hello (other
    bytes close the relay: red team 12b)."""
    chunks = [data[at : at + size] for at in range(0, len(data), size)]
    return b"".join(bytes([23, 3, 3]) + len(chunk).to_bytes(2) + chunk for chunk in chunks)


def _hello_padded(name: str, pad: int) -> bytes:
    """A real ClientHello for ``name`` with a padding extension of ``pad`` bytes put before all the others (so
    the server name comes after it), cut into TLS records of at most 16 KiB."""
    hello = _client_hello(name)
    body = hello[9:]  # after the record header (5) and the handshake header (4)
    at = 2 + 32
    at += 1 + body[at]  # session id
    at += 2 + int.from_bytes(body[at : at + 2])  # cipher suites
    at += 1 + body[at]  # compression methods
    extensions = (0x0015).to_bytes(2) + pad.to_bytes(2) + bytes(pad) + body[at + 2 :]
    message = b"\x01" + (at + 2 + len(extensions)).to_bytes(3) + body[:at] + len(extensions).to_bytes(2) + extensions
    chunks = [message[i : i + 16384] for i in range(0, len(message), 16384)]
    return b"".join(b"\x16\x03\x01" + len(chunk).to_bytes(2) + chunk for chunk in chunks)


def allowed_policy(
    upstream_port: int, network: bool = False, mode: str = "enforce", hosts: tuple[str, ...] = ("allowed.test",)
) -> Policy:
    """The policy of these tests: sandbox ``box`` on loopback in ``mode``, each of ``hosts`` allowed at
    `upstream_port` through a host rule, and with `network` a network rule for 127.0.0.1 there as well."""
    rules = "".join(f"        - {{host: {host}, ports: [{upstream_port}]}}\n" for host in hosts)
    networks = f"      networks: [{{cidr: 127.0.0.1/32, ports: [{upstream_port}], protocols: [tcp]}}]\n"
    return parse_policy(
        f"""
version: 1
sandboxes:
  box:
    sources: [127.0.0.0/8]
    mode: {mode}
    allow:
      hosts:
{rules}{networks if network else ""}"""
    )


def allowed_names(sandbox: str, address: str) -> frozenset[str]:
    """The bindings of these tests: ``box`` looked up allowed.test, which is 127.0.0.1."""
    return frozenset({"allowed.test"}) if (sandbox, address) == ("box", "127.0.0.1") else frozenset()


def allowed_gate(upstream_port: int, network: bool = False, mode: str = "enforce") -> Gate:
    """The gate of these tests (and of bench/front_conn_work.py): `allowed_policy`'s TLS to allowed.test
    (127.0.0.1) at `upstream_port`, with `network` a network rule for it as well, in ``mode``."""
    lists = shipped_lists()
    policy = allowed_policy(upstream_port, network, mode)
    return Gate(policy, allowed_names, make_name_detector(lists), stream_detectors(lists), this_host=ORIGIN_ON_LOOPBACK)


class _Setup:
    def __init__(self, upstream_port: int, network: bool = False) -> None:
        self.gate = allowed_gate(upstream_port, network)
        self.reporter = _Reporter()
        self.handed: list[bytes] = []
        self.nodelay: list[int] = []
        self.front = Front(self.gate, self.reporter, self._handoff, destination=lambda _: ("127.0.0.1", upstream_port))

    async def _handoff(self, conn: socket.socket, _peer: tuple[str, int]) -> None:
        self.nodelay.append(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        reader, writer = await asyncio.open_connection(sock=conn)
        got = b""
        while chunk := await reader.read(65536):  # what mitmproxy would read: everything the client sent
            got += chunk
        self.handed.append(got)
        writer.close()


async def _serving(setup: _Setup) -> tuple[int, asyncio.Task[None]]:
    port = free_port()
    task = asyncio.create_task(setup.front.serve(port, hosts=("127.0.0.1",)))

    async def listening() -> bool:
        assert not task.done(), task
        assert setup.front._listeners, "the front does not listen yet"
        return True

    await eventually_async(listening, timeout=10)
    return port, task


async def _handed(setup: _Setup, count: int = 1) -> None:
    async def handed() -> bool:
        assert len(setup.handed) >= count, setup.handed
        return True

    await eventually_async(handed, timeout=10)


async def _exchange(port: int, send: bytes, expect: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(send)
    await writer.drain()
    got = b""
    while len(got) < expect:
        chunk = await asyncio.wait_for(reader.read(65536), scaled(10))
        if not chunk:
            break
        got += chunk
    writer.close()
    return got


def _run(test: Callable[[], object]) -> None:
    """On the workers' loop (`front_loop`: the front's sockets in the loop's own epoll)."""
    asyncio.run(test(), loop_factory=front_loop)  # type: ignore[arg-type]


def test_allowed_tls_is_relayed_by_the_front_byte_for_byte() -> None:
    async def scenario() -> None:
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        setup = _Setup(int(server.sockets[0].getsockname()[1]))
        port, task = await _serving(setup)
        hello = _client_hello("allowed.test")
        payload = hello + _records(bytes(range(256)) * 400)  # the ClientHello, then 100 KiB more in records
        assert await _exchange(port, payload, len(payload)) == payload
        assert (setup.front.relayed, setup.front.handed_off, setup.handed) == (1, 0, [])
        [allowed] = setup.reporter.reported  # one decision line, tied to the flow, and no record
        assert (allowed.verdict.action, allowed.host, allowed.transport) == (Enforcement.ALLOW, "allowed.test", "tcp")
        assert (allowed.dst, allowed.sandbox) == ("127.0.0.1", "box")
        assert allowed.verdict.rule.startswith("sandboxes.box.allow.hosts")
        task.cancel()
        server.close()

    _run(scenario)


@pytest.mark.parametrize("hello_first", [True, False], ids=["hello-there-at-accept", "hello-after-accept"])
def test_allowed_tls_is_relayed_whether_its_hello_is_there_at_accept_or_comes_later(hello_first: bool) -> None:
    """A hello there when the front accepts is decided and dialled in the accept's callbacks; one that comes later
    is waited for in the front's poller (`front._FirstBytes`), the connection held idle meanwhile: the same relay,
    decision and line either way."""

    async def scenario() -> None:
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        setup = _Setup(int(server.sockets[0].getsockname()[1]))
        port, task = await _serving(setup)
        hello = _client_hello("allowed.test")
        client = socket.create_connection(("127.0.0.1", port))  # blocking: the front's loop does not run meanwhile
        client.settimeout(scaled(10))
        if hello_first:
            client.sendall(hello)  # in the socket before the loop's next turn accepts it
        else:

            async def accepted() -> bool:
                assert setup.front.idle.total == 1, "the front has not accepted it yet"
                return True

            await eventually_async(accepted, timeout=10)  # waiting for the first bytes
            client.sendall(hello)
        got = b""
        while len(got) < len(hello):
            got += await asyncio.to_thread(client.recv, 65536)
        client.close()
        assert got == hello
        assert (setup.front.relayed, setup.front.handed_off, setup.handed) == (1, 0, [])
        [allowed] = setup.reporter.reported
        assert (allowed.verdict.action, allowed.host) == (Enforcement.ALLOW, "allowed.test")
        task.cancel()
        server.close()

    _run(scenario)


def test_bytes_the_destination_sends_first_are_not_lost() -> None:
    async def greet_then_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"greeting")  # before the front has attached the client's side
        await _echo(reader, writer)

    async def scenario() -> None:
        server = await asyncio.start_server(greet_then_echo, "127.0.0.1", 0)
        setup = _Setup(int(server.sockets[0].getsockname()[1]))
        port, task = await _serving(setup)
        hello = _client_hello("allowed.test")
        assert await _exchange(port, hello, len(hello) + 8) == b"greeting" + hello
        assert setup.front.relayed == 1
        task.cancel()
        server.close()

    _run(scenario)


@pytest.mark.parametrize(
    ("first_bytes", "network"),
    [
        # (first bytes the gate refuses, TLS naming a host no rule allows or Stratum to a network rule's address,
        # are refused in the front: tests/proxy/test_firstlook.py)
        # plain HTTP the fast path does not take (egress.proxy.httpfast, tests/proxy/test_httpfast.py)
        pytest.param(
            lambda: b"POST / HTTP/1.1\r\nHost: allowed.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            False,
            id="plain-http-chunked",
        ),
        pytest.param(lambda: b"a line protocol's opening\n", True, id="raw-stream-to-a-network-rule"),
        # (the front waits PEEK_WAIT for the rest, then hands it off: see the autouse fixture and the silent client)
        pytest.param(lambda: _client_hello("allowed.test")[:40], False, id="half-a-client-hello"),
        # A ClientHello longer than the front peeks, to an address a network rule allows, its name (on the DoH
        # list) after 17 KB of padding: never judged on the first 16 KiB, where the name is not.
        pytest.param(lambda: _hello_padded("dns.google", 17_000), True, id="client-hello-over-16-KiB"),
    ],
)
def test_everything_else_is_handed_off_unread_without_nagle(
    first_bytes: Callable[[], bytes], network: bool, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    if "half-a-client-hello" in request.node.name:
        monkeypatch.setattr(front_module, "PEEK_WAIT", 0.05)  # the rest never comes: the wait is what ends it
        monkeypatch.setattr(front_module, "HELLO_WAIT", 0.05)

    async def scenario() -> None:
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        setup = _Setup(int(server.sockets[0].getsockname()[1]), network)
        port, task = await _serving(setup)
        sent = first_bytes()
        await _exchange(port, sent, 0)
        await _handed(setup)
        assert setup.handed == [sent]  # nothing was consumed by the front
        assert setup.nodelay == [1]
        assert (setup.front.relayed, setup.front.handed_off) == (0, 1)
        assert setup.reporter.reported == []  # the front decides nothing it hands off: mitmproxy reports it
        task.cancel()
        server.close()

    _run(scenario)


def test_a_silent_client_is_handed_off_after_the_peek_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(front_module, "PEEK_WAIT", 0.05)

    async def scenario() -> None:
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        setup = _Setup(int(server.sockets[0].getsockname()[1]))
        port, task = await _serving(setup)
        _, writer = await asyncio.open_connection("127.0.0.1", port)

        async def handed_off() -> bool:
            assert setup.front.handed_off == 1  # a server-first protocol: mitmproxy dials and waits
            return True

        await eventually_async(handed_off, timeout=10)
        writer.write(b"late")
        writer.close()
        await _handed(setup)
        assert setup.handed == [b"late"]
        task.cancel()
        server.close()

    _run(scenario)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


# -- TLS through a network rule: relayed through the TLS shape watcher -----------------------------------------
SSH_IN_TLS = [
    ("c", 41),
    ("s", 41),
    ("c", 1560),
    ("s", 1088),
    ("c", 1208),
    ("s", 1564),
    ("c", 16),
    ("c", 44),
    ("s", 44),
    ("c", 60),
    ("s", 76),
    ("c", 140),
    ("s", 100),
    ("c", 308),
    ("s", 28),
    ("c", 60),
    ("s", 248),
]
"""The plaintext record sizes of OpenSSH inside stunnel after the handshake (tests/detect/tlsshape_traces.py,
SSH_SOCKS): banners, key exchange, user authentication; ``s 28`` is USERAUTH_SUCCESS, ``c 60`` the SOCKS channel."""
HTTPS_LIKE = [("c", 86), ("s", 211), ("s", 1119), ("c", 90), ("s", 300), ("c", 120), ("s", 4000)]


async def scripted_tls_server(
    script: list[tuple[str, int]], tmp_path: Path
) -> tuple[asyncio.Server, int, list[int], Path]:
    """A TLS server that plays the ``s`` entries of ``script`` (each one write, so one record) and reads the ``c``
    ones; returns it, its port, the sizes it received (filled as it reads) and the CA file its certificate needs."""
    files = certs.ensure(tmp_path / "certs")
    chain, key = files.servers["pool"]
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(chain, key)
    received: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            for side, size in script:
                if side == "s":
                    writer.write(b"s" * size)
                    await writer.drain()
                else:
                    await reader.readexactly(size)
                    received.append(size)
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_context)
    return server, int(server.sockets[0].getsockname()[1]), received, Path(files.ca)


async def scripted_tls_client(script: list[tuple[str, int]], port: int, ca: Path, sni: str) -> int:
    """The client side of ``script`` through the front at ``port`` with ``sni``: how many entries it completed."""
    client_context = ssl.create_default_context(cafile=str(ca))
    client_context.check_hostname = False
    done = 0
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context, server_hostname=sni)
    with contextlib.suppress(OSError, asyncio.IncompleteReadError, TimeoutError):
        for side, size in script:
            if side == "c":
                writer.write(b"c" * size)
                await writer.drain()
            else:
                await asyncio.wait_for(reader.readexactly(size), scaled(10))
            done += 1
    writer.close()
    return done


async def _scripted_tls(
    script: list[tuple[str, int]], tmp_path: Path, network: bool = True
) -> tuple[_Setup, list[int], int]:
    """A TLS server and client that exchange ``script`` through the front; returns the setup, the sizes the server
    received and how many script entries the client completed. ``network``: the destination is on a network rule
    (else allowed only by the host rule of the bound SNI)."""
    server, server_port, received, ca = await scripted_tls_server(script, tmp_path)
    setup = _Setup(server_port, network=network)
    port, task = await _serving(setup)
    done = await scripted_tls_client(script, port, ca, "allowed.test")
    task.cancel()
    server.close()
    return setup, received, done


@pytest.mark.parametrize("network", [True, False], ids=["network-rule", "host-rule-bound-sni"])
def test_ssh_inside_watched_tls_is_closed_before_its_first_encrypted_packet(tmp_path: Path, network: bool) -> None:
    """Closed at SSH's opening (identification, clear key exchange, NEWKEYS): the client's first encrypted packet
    (SERVICE_REQUEST) is not forwarded, so no authentication, let alone a channel, ever reaches the server. Through a
    network rule and to a host rule's bound name alike (issue 9: every relayed TLS connection is watched)."""

    async def scenario() -> None:
        setup, received, done = await _scripted_tls(SSH_IN_TLS, tmp_path, network)
        assert done == SSH_IN_TLS.index(("c", 44)) + 1, "its write succeeds, its answer never comes"
        # NEWKEYS goes too unless it arrives in the same read as the packet after it (then neither is forwarded)
        assert received in ([41, 1560, 1208], [41, 1560, 1208, 16]), "only the opening reached the server"
        assert setup.front.watch_blocked == 1
        blocked = [flow.verdict for flow in setup.reporter.reported if flow.verdict.action is Enforcement.BLOCK]
        assert [(v.reason, v.finding.protocol if v.finding else "") for v in blocked] == [(Reason.TUNNEL, "ssh-in-tls")]

    _run(scenario)


@pytest.mark.parametrize("network", [True, False], ids=["network-rule", "host-rule-bound-sni"])
def test_https_like_tls_through_a_watched_rule_passes(tmp_path: Path, network: bool) -> None:
    async def scenario() -> None:
        setup, received, done = await _scripted_tls(HTTPS_LIKE, tmp_path, network)
        assert done == len(HTTPS_LIKE)
        assert received == [size for side, size in HTTPS_LIKE if side == "c"]
        assert setup.front.watch_blocked == 0 and setup.front.relayed == 1
        assert [flow.verdict.action for flow in setup.reporter.reported] == [Enforcement.ALLOW]

    _run(scenario)


SHAPE_POLICY = """
version: 1
sandboxes:
  box:
    sources: [127.0.0.0/8]
    mode: enforce
    allow: {hosts: [{host: allowed.test, ports: [443]}]}
    detectors: {mining_shape: %s}
"""


def _finding(detector: str, protocol: str, category: Category = Category.TUNNEL) -> Finding:
    return Finding(category, protocol, detector, "shape")


@pytest.mark.parametrize("suspicions", [True, False], ids=["network-rule", "host-rule"])
def test_the_watch_reports_suspected_shapes_only_through_a_network_rule(suspicions: bool) -> None:
    """TLS in TLS and keystroke echo are shapes ordinary TLS takes too: recorded where a network rule names an
    address without a name, dropped to a host rule's bound name (noise); neither closes the connection."""
    setup = _Setup(443)
    sandbox = setup.gate.policy.sandboxes[0]
    watch = setup.front._watch(sandbox, ("127.0.0.1", 5000), ("127.0.0.1", 443), "allowed.test", suspicions)
    for protocol in sorted(tlsshape.SUSPECTED):
        assert watch.on_finding(_finding(tlsshape.NAME, protocol)) is False
    reported = [flow.verdict for flow in setup.reporter.reported]
    assert [v.action for v in reported] == ([Enforcement.RECORD] * len(tlsshape.SUSPECTED) if suspicions else [])


@pytest.mark.parametrize("action", ["block", "record"])
def test_the_watch_decides_mining_shape_to_a_host_rule_name_by_the_policy(action: str) -> None:
    """Mining told from the shape to a host rule's bound name (no network rule): recorded as mining, and the
    connection closed where the sandbox's ``detectors.mining_shape`` says block; SSH in TLS always closes it."""
    setup = _Setup(443)
    setup.gate = Gate(
        parse_policy(SHAPE_POLICY % action),
        setup.gate.names_for,
        setup.gate.name_detector,
        (),
        this_host=ORIGIN_ON_LOOPBACK,
    )
    sandbox = setup.gate.policy.sandboxes[0]
    watch = setup.front._watch(sandbox, ("127.0.0.1", 5000), ("127.0.0.1", 443), "allowed.test", suspicions=False)
    mining = _finding(miningshape.NAME, miningshape.PROTOCOL, Category.MINING)
    assert watch.on_finding(mining) is (action == "block")
    assert watch.on_finding(_finding(tlsshape.NAME, "ssh-in-tls")) is True
    reported = [flow.verdict for flow in setup.reporter.reported]
    assert [(v.reason, v.action) for v in reported] == [
        (Reason.MINING, Enforcement.BLOCK if action == "block" else Enforcement.RECORD),
        (Reason.TUNNEL, Enforcement.BLOCK),
    ]
    assert all(flow.host == "allowed.test" for flow in setup.reporter.reported)


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
def test_the_family_original_destination_reads_is_the_sockets(family: socket.AddressFamily) -> None:
    """`original_destination` reads a socket's family as the plain int (no `AddressFamily` made per connection):
    the same family `socket.family` gives, for a socket made and one accepted."""
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(family) as listener:
        try:
            listener.bind((host, 0))
        except OSError:
            pytest.skip("no IPv6 loopback here")
        listener.listen(1)
        with socket.create_connection(listener.getsockname()[:2]) as made:
            accepted, _ = listener.accept()
            with accepted:
                for sock in (listener, made, accepted):
                    assert front_module._family(sock) == sock.family == family
                    assert type(front_module._family(sock)) is int


def test_a_relay_that_fails_to_start_leaves_the_front_and_hands_the_client_to_mitmproxy_unread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An error after the relay registered both sockets on the front's poller, before it read anything: both
    leave the poller (the client's descriptor goes to mitmproxy's loop, which could not take it otherwise) and the
    client is handed off with its ClientHello unread; nothing reached the destination."""

    class Failing(Relay):
        def start(self) -> None:
            self.up.resume()
            self.down.resume()
            raise RuntimeError("a bug in the relay's start")

    monkeypatch.setattr(front_module, "Relay", Failing)

    async def scenario() -> None:
        reached: list[bytes] = []

        async def destination(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                reached.append(await reader.read())
            except ConnectionResetError:  # the relay's side is reset on close (its linger is zero)
                reached.append(b"")
            writer.close()

        server = await asyncio.start_server(destination, "127.0.0.1", 0)
        setup = _Setup(int(server.sockets[0].getsockname()[1]))
        port, task = await _serving(setup)
        hello = _client_hello("allowed.test")
        await _exchange(port, hello, 0)
        await _handed(setup)
        assert setup.handed == [hello]
        assert (setup.front.relayed, setup.front.handed_off) == (0, 1)

        async def closed() -> bool:
            assert reached == [b""], reached
            return True

        await eventually_async(closed, timeout=10)
        assert set(setup.front.poller._fds) == {listener.fileno() for listener in setup.front._listeners}
        task.cancel()
        server.close()

    _run(scenario)


@pytest.mark.parametrize("network", [False, True], ids=["host-rule", "network-rule"])
def test_stratum_in_clear_after_the_hello_closes_the_relay_before_it_is_forwarded(network: bool) -> None:
    """Red team 12b: a real ClientHello to an allowed name (or a network rule's address), then Stratum in clear.
    The bytes that are no TLS record end the watch as a tunnel (`tlsshape`, ``not-tls``): the destination gets
    nothing of the chunk that holds them (here the hello too), the relay closes, and the block is reported. Was:
    the watch stopped reading at the first byte that was no record, so the Stratum went on, spliced unseen."""

    async def scenario() -> None:
        heard = bytearray()
        closed = asyncio.Event()

        async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionResetError):  # the relay aborts both sides
                while data := await reader.read(65536):
                    heard.extend(data)
            writer.close()
            closed.set()

        server = await asyncio.start_server(sink, "127.0.0.1", 0)
        setup = _Setup(int(server.sockets[0].getsockname()[1]), network=network)
        port, task = await _serving(setup)
        hello = _client_hello("allowed.test")
        stratum = b'\n{"id": 1, "method": "mining.subscribe", "params": ["cpuminer/2.5.1"]}\n'
        got = b"reset not seen"
        with contextlib.suppress(ConnectionResetError):
            got = await _exchange(port, hello + stratum, 1)
        await asyncio.wait_for(closed.wait(), scaled(10))
        assert got in {b"", b"reset not seen"} and hello.startswith(bytes(heard))  # the chunk with it is not sent
        blocked = [r for r in setup.reporter.reported if r.verdict.action is Enforcement.BLOCK]
        assert [(str(r.verdict.reason), r.verdict.finding.protocol) for r in blocked if r.verdict.finding] == [
            ("tunnel", "not-tls")
        ]
        task.cancel()
        server.close()

    _run(scenario)
