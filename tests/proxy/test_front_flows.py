"""The front as a source of the flow log: a relayed connection of a sandbox with ``flow_log: true`` is one ended
flow when it closes, with the bytes each side sent; without the switch, none."""

from __future__ import annotations

import asyncio

import pytest

from egress.flowlog import EndedFlow
from egress.policy.loader import parse_policy
from tests.proxy.test_front import _client_hello, _echo, _exchange, _records, _run, _serving, _Setup
from tests.waiting import eventually_async


class Sink:
    def __init__(self) -> None:
        self.ended: list[EndedFlow] = []

    def flow_ended(self, flow: EndedFlow) -> None:
        self.ended.append(flow)


@pytest.mark.parametrize("logged", [True, False])
def test_a_relayed_connection_ends_as_one_flow_with_its_bytes(logged: bool) -> None:
    async def scenario() -> None:
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        upstream_port = int(server.sockets[0].getsockname()[1])
        setup = _Setup(upstream_port)
        if logged:  # the same policy with the switch on
            setup.gate.policy = parse_policy(
                "version: 1\nsandboxes:\n  box:\n    sources: [127.0.0.0/8]\n    mode: enforce\n    flow_log: true\n"
                f"    allow:\n      hosts:\n        - {{host: allowed.test, ports: [{upstream_port}]}}\n"
            )
        sink = Sink()
        setup.front.flows = sink
        port, task = await _serving(setup)
        payload = _client_hello("allowed.test") + _records(bytes(range(256)) * 40)
        assert await _exchange(port, payload, len(payload)) == payload

        async def ended() -> bool:
            assert sink.ended, "no flow yet"
            return True

        if logged:
            await eventually_async(ended, timeout=10)
            [flow] = sink.ended
            assert (flow.sandbox, flow.dst, flow.dport, flow.host, flow.action) == (
                "box", "127.0.0.1", upstream_port, "allowed.test", "allow"
            )  # fmt: skip
            assert (flow.up, flow.down) == (len(payload), len(payload)) and flow.ended >= flow.started
        else:
            assert setup.front.relayed == 1 and sink.ended == []
        task.cancel()
        server.close()

    _run(scenario)
