"""Tests for egress.lab.delegation: ns.lab relays delegated zones to the test's server, answers the rest itself."""

from __future__ import annotations

import asyncio
import json
import pathlib
import socket

from egress.detect import dns
from egress.lab import authority, delegation


def test_target_follows_the_file(tmp_path: pathlib.Path) -> None:
    zones = delegation.Delegations(tmp_path)
    query = dns.build_query(1, "abc.I1.lab", dns.NULL)
    assert zones.target(query) is None  # no file: answered here
    (tmp_path / delegation.FILE).write_text(json.dumps({"i1.lab": ["10.203.2.2", 5300]}))
    assert zones.target(query) == ("10.203.2.2", 5300)
    assert zones.target(dns.build_query(1, "i1.lab", dns.SOA)) == ("10.203.2.2", 5300)
    assert zones.target(dns.build_query(1, "xi1.lab", dns.A)) is None
    assert zones.target(b"\x00") is None


class _Echo(asyncio.DatagramProtocol):
    """The attacker's server: answers every query NOERROR with a TXT record saying it was there."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        query = dns.parse(data)
        record = dns.Record(query.questions[0].labels, dns.TXT, 0, dns.txt_data([b"attacker"]))
        self.transport.sendto(dns.build_response(query, dns.NOERROR, [record]), addr)


def test_udp_relays_delegated_names_and_answers_the_rest(tmp_path: pathlib.Path) -> None:
    async def scenario() -> tuple[dns.Message, dns.Message]:
        loop = asyncio.get_running_loop()
        echo, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
        echo_port = echo.get_extra_info("sockname")[1]
        (tmp_path / delegation.FILE).write_text(json.dumps({"i1.lab": ["127.0.0.1", echo_port]}))
        ns, _ = await loop.create_datagram_endpoint(
            lambda: delegation.UdpAuthority(delegation.Delegations(tmp_path)), local_addr=("127.0.0.1", 0)
        )
        address = ns.get_extra_info("sockname")
        answers = []
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.setblocking(False)
            for name in ("x.i1.lab", "allowed.lab"):
                await loop.sock_sendto(client, dns.build_query(5, name, dns.TXT), address)
                answers.append(dns.parse(await asyncio.wait_for(loop.sock_recv(client, 4096), 10)))
        ns.close()
        echo.close()
        return answers[0], answers[1]

    relayed, own = asyncio.run(scenario())
    assert relayed.answers and relayed.answers[0].data == dns.txt_data([b"attacker"])
    assert own == dns.parse(authority.answer(dns.build_query(5, "allowed.lab", dns.TXT)) or b"")
