"""A real proxy worker (the front, mitmproxy and our addon, `egress.proxy.mitm.server.run_worker`) on loopback, in
front of the attacker's `Site`, without nftables: where a connection was going is given to the front and to
mitmproxy's transparent mode (``mitmproxy.platform.original_addr``) by the test (`Worker.to`).

The sandbox is 127.0.0.0/8; ``allowed.lab`` is bound to 127.0.0.1, allowed on the site's ports, and on the
decrypt list, so TLS to it is intercepted with the worker's CA (``confdir``), which `Worker.connect` trusts. The
policy allows one more upgrade, ``x-inspected``.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import pathlib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from unittest import mock

from mitmproxy import connection

from egress.decide import Enforcement
from egress.decisions import DecidedFlow
from egress.detect.base import Detector, FlowView, Result
from egress.detect.names import make_name_detector
from egress.detect.registry import stream_detectors
from egress.flowlog import EndedFlow
from egress.lab import certs
from egress.policy.loader import parse_policy
from egress.proxy.gate import Gate
from egress.proxy.idle import IDLE_TIMEOUT
from egress.proxy.mitm import server
from tests.lists import shipped_lists
from tests.ports import free_port, listening_here
from tests.proxy import ORIGIN_ON_LOOPBACK
from tests.proxy.mitm.site import Site, serve_forever
from tests.waiting import eventually, scaled

EXPLODE = b"EXPLODE-THE-DETECTOR"
"""Bytes that make the test's extra detector raise: an inspection error, which must block, never forward."""


def exploding(view: FlowView) -> Result:
    if EXPLODE in view.client or EXPLODE in view.server:
        raise ValueError("a detector failed on attacker bytes")
    return None


class Reported:
    def __init__(self) -> None:
        self.flows: list[DecidedFlow] = []
        self.ended: list[EndedFlow] = []
        self.lock = threading.Lock()

    def report(self, attempt: DecidedFlow) -> None:
        with self.lock:
            self.flows.append(attempt)

    def clear(self) -> None:
        with self.lock:
            self.flows.clear()
            self.ended.clear()

    def flow_ended(self, flow: EndedFlow) -> None:
        """The flow log's sink (`egress.flowlog`): the policy keeps one for ``box``."""
        with self.lock:
            self.ended.append(flow)

    def blocks(self, sport: int) -> list[DecidedFlow]:
        """The blocks reported for the connection from local port ``sport``."""
        with self.lock:
            return [f for f in self.flows if f.verdict.action is Enforcement.BLOCK and f.sport == sport]


class Worker:
    def __init__(self, directory: pathlib.Path, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.idle_timeout = idle_timeout
        self.files = certs.ensure(directory / "lab")
        self.confdir = directory / "mitmproxy"
        self.site = Site()
        self.reported = Reported()
        self.target = ("127.0.0.1", 0)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.ports: dict[str, int] = {}
        self.port = 0

    def to(self, kind: str) -> None:
        """Where the next connections go: the site's ``plain`` or ``tls`` listener, or one of those whose server
        speaks first (``greeting``, ``tls-greeting``)."""
        self.target = ("127.0.0.1", self.ports[kind])

    def _destination(self, _sock: socket.socket) -> tuple[str, int]:
        return self.target

    def gate(self) -> Gate:
        lists = shipped_lists()
        policy = parse_policy(
            f"""version: 1
sandboxes:
  box:
    sources: [127.0.0.0/8]
    mode: enforce
    flow_log: true
    allow:
      hosts:
        - {{host: allowed.lab, ports: [{", ".join(str(port) for port in self.ports.values())}]}}
    decrypt: [allowed.lab]
    upgrades: [x-inspected]
"""
        )

        def names_for(sandbox: str, address: str) -> frozenset[str]:
            return frozenset({"allowed.lab"}) if (sandbox, address) == ("box", "127.0.0.1") else frozenset()

        detectors: tuple[Detector, ...] = (*stream_detectors(lists), exploding)
        return Gate(policy, names_for, make_name_detector(lists), detectors, this_host=ORIGIN_ON_LOOPBACK)

    def start(self) -> None:
        self.thread.start()
        chain, key = self.files.servers["allowed"]
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(chain, key)
        tls.set_alpn_protocols(["h2", "http/1.1"])
        greeting = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        greeting.load_cert_chain(chain, key)
        for kind, context in (("plain", None), ("tls", tls), ("greeting", None), ("tls-greeting", greeting)):
            serve_forever(self.site, context, functools.partial(self.ports.__setitem__, kind), self.loop)
        eventually(lambda: len(self.ports) == 4)
        self.site.greeting_ports.update({self.ports["greeting"], self.ports["tls-greeting"]})
        for _ in range(4):  # a port another test drew at the same moment is swapped for another
            if self._serve(free_port()):
                return
        raise AssertionError("the worker found no free port in four draws")

    def _serve(self, port: int) -> bool:
        """Start the worker on ``port`` and wait until it listens there; False when the port turned out taken."""
        self.port = port
        self.running = asyncio.run_coroutine_threadsafe(
            server.run_worker(
                self.gate(),
                self.reported,
                self.port,
                str(self.confdir),
                upstream_ca=str(self.files.ca),
                host="127.0.0.1",
                destination=self._destination,
                flows=self.reported,
                idle_timeout=self.idle_timeout,
            ),
            self.loop,
        )

        def listening() -> bool:
            if self.running.done():
                return True  # failed: below
            # Ours, not a listener of another that had the port first (mitmproxy takes seconds to start).
            assert listening_here(self.port), f"the worker does not listen on {self.port} yet"
            return True

        eventually(listening, timeout=30)
        if not self.running.done():
            return True
        error = self.running.exception()
        if isinstance(error, OSError) and error.errno == errno.EADDRINUSE:
            return False
        raise AssertionError(f"the worker stopped: {error!r}") from error

    def stop(self) -> None:
        self.running.cancel()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(scaled(10))

    def connect(self, tls: bool, alpn: tuple[str, ...] = ("http/1.1",)) -> socket.socket:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=scaled(10))
        if not tls:
            return raw
        context = ssl.create_default_context(cafile=str(self.confdir / "mitmproxy-ca-cert.pem"))
        if alpn:
            context.set_alpn_protocols(list(alpn))
        return context.wrap_socket(raw, server_hostname="allowed.lab")


@contextmanager
def running_worker(directory: pathlib.Path, idle_timeout: float = IDLE_TIMEOUT) -> Iterator[Worker]:
    """A worker (its idle timeout ``idle_timeout``) with the site, for the length of the block."""
    worker = Worker(directory, idle_timeout)

    def original_addr(_sock: socket.socket) -> tuple[str, int]:
        return worker.target

    with mock.patch("mitmproxy.platform.original_addr", original_addr):
        worker.start()
        try:
            yield worker
        finally:
            worker.stop()


def read_response(sock: socket.socket) -> bytes:
    """One HTTP/1.1 response with a Content-Length (or whatever comes until the connection closes)."""
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = _recv(sock)
        if not chunk:
            return got
        got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = _recv(sock)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except (ConnectionError, ssl.SSLError, TimeoutError):
        return b""


def read_until(sock: socket.socket, done: Callable[[bytes], bool]) -> bytes:
    """What arrives until ``done(everything so far)`` holds or the connection closes (or the read times out)."""
    got = b""
    while not done(got) and (chunk := _recv(sock)):
        got += chunk
    return got


def read_all(sock: socket.socket) -> bytes:
    """Everything until the connection closes (or the read times out)."""
    got = b""
    while chunk := _recv(sock):
        got += chunk
    return got


__all__ = ["EXPLODE", "Worker", "connection", "read_all", "read_response", "read_until", "running_worker"]
