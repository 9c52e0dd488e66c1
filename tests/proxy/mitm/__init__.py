"""Tests of egress.proxy.mitm: scripted events in, commands and reported decisions out, no sockets."""

from __future__ import annotations

from mitmproxy import connection, options
from mitmproxy.connection import ConnectionState
from mitmproxy.proxy.context import Context
from mitmproxy.proxy.layers import modes
from mitmproxy.test import tflow

from egress.decisions import DecidedFlow
from egress.detect.names import make_name_detector
from egress.detect.registry import stream_detectors
from egress.policy.loader import parse_policy
from egress.proxy.gate import Gate
from tests.lists import shipped_lists

SANDBOX_HOST = "10.0.0.5"
ALLOWED_ADDRESS = "198.51.100.7"
"""Bound to ``allowed.test`` (the resolver answered it), and open to raw TCP on port 3333 by a network rule."""
OTHER_ADDRESS = "203.0.113.9"

POLICY = f"""version: 1
sandboxes:
  box:
    sources: [10.0.0.0/24]
    mode: {{mode}}
    allow:
      hosts:
        - {{{{host: allowed.test, ports: [80, 443]}}}}
      networks:
        - {{{{cidr: {ALLOWED_ADDRESS}/32, ports: [3333], protocols: [tcp]}}}}
{{extra}}"""


class Reported:
    """A reporter that keeps every decision (and every connection the addon severed)."""

    def __init__(self) -> None:
        self.flows: list[DecidedFlow] = []
        self.severed: list[connection.Client] = []

    def report(self, attempt: DecidedFlow) -> None:
        self.flows.append(attempt)

    def sever(self, client: connection.Client) -> None:
        """The addon's `Sever`: kept, so a test sees which connections were closed."""
        self.severed.append(client)


def make_gate(mode: str = "enforce", extra: str = "") -> Gate:
    """``extra``: more of the sandbox's keys, indented as they are (e.g. ``"    detectors: {...}\\n"``)."""
    lists = shipped_lists()
    policy = parse_policy(POLICY.format(mode=mode, extra=extra))

    def names_for(sandbox: str, address: str) -> frozenset[str]:
        return frozenset({"allowed.test"}) if (sandbox, address) == ("box", ALLOWED_ADDRESS) else frozenset()

    return Gate(policy, names_for, make_name_detector(lists), stream_detectors(lists))


def client(source: str = SANDBOX_HOST, port: int = 40000) -> connection.Client:
    made = tflow.tclient_conn()
    made.peername = (source, port)
    return made


def make_context(
    destination: tuple[str, int],
    source: str = SANDBOX_HOST,
    connected: bool = True,
    peer: connection.Client | None = None,
) -> Context:
    """A transparent-mode connection from ``source`` to ``destination``, its server side open (or not yet)."""
    context = Context(peer or client(source), options.Options())
    context.server.address = destination
    if connected:
        context.server.timestamp_start = 946681202
        context.server.state = ConnectionState.OPEN
    context.layers = [modes.TransparentProxy(context)]
    return context
