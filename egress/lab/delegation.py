"""Zones of the lab's authority delegated to a server the attacker runs (an iodined, a rebinding server), as a
recursive resolver on the real internet would reach the authority of any zone.

Tests write ``<state_dir>/delegations.json`` (``{"i.lab": ["10.203.2.2", 5300]}``) and start their server in the
internet namespace; ns.lab then relays every query under that zone to it (UDP to UDP, TCP to TCP) and its answer
back, unchanged. Without the file, or for other names, ns.lab answers itself (`egress.lab.authority`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import struct

from egress.detect import dns
from egress.lab import authority

FILE = "delegations.json"
RELAY_TIMEOUT = 5.0


class Delegations:
    """The delegations file, re-read when it changes."""

    def __init__(self, state_dir: pathlib.Path) -> None:
        self.path = state_dir / FILE
        self._stamp: float | None = None
        self._zones: dict[str, tuple[str, int]] = {}

    def target(self, query: bytes) -> tuple[str, int] | None:
        """Where to relay ``query`` (a delegated zone's server), or ``None`` to answer it here."""
        message = dns.parse_partial(query)
        if message is None or len(message.questions) != 1:
            return None
        name = message.questions[0].name
        for zone, server in self._current().items():
            if name == zone or name.endswith("." + zone):
                return server
        return None

    def _current(self) -> dict[str, tuple[str, int]]:
        try:
            stamp = self.path.stat().st_mtime
        except OSError:
            self._stamp, self._zones = None, {}
            return self._zones
        if stamp != self._stamp:
            with contextlib.suppress(OSError, ValueError):
                loaded = json.loads(self.path.read_text())
                self._zones = {str(zone): (str(host), int(port)) for zone, (host, port) in loaded.items()}
                self._stamp = stamp
        return self._zones


class _Relay(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        if not self.answer.done():
            self.answer.set_result(data)


async def relay_udp(server: tuple[str, int], query: bytes) -> bytes | None:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(_Relay, remote_addr=server)
    try:
        transport.sendto(query)
        return await asyncio.wait_for(protocol.answer, RELAY_TIMEOUT)
    except (TimeoutError, OSError):
        return None
    finally:
        transport.close()


class UdpAuthority(asyncio.DatagramProtocol):
    """ns.lab over UDP: delegated names relayed, the rest answered by `authority.answer`."""

    def __init__(self, delegations: Delegations) -> None:
        self.delegations = delegations
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.DatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        target = self.delegations.target(data)
        if target is None:
            self._send(authority.answer(data), addr)
            return
        task = asyncio.get_running_loop().create_task(self._relay(target, data, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _relay(self, target: tuple[str, int], data: bytes, addr: tuple[str | int, ...]) -> None:
        self._send(await relay_udp(target, data), addr)

    def _send(self, answer: bytes | None, addr: tuple[str | int, ...]) -> None:
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)


async def serve_tcp(delegations: Delegations, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """ns.lab over TCP: as `authority.serve_tcp`, with delegated names relayed over TCP."""
    with contextlib.suppress(asyncio.IncompleteReadError, TimeoutError, ConnectionError, OSError):
        while True:
            (length,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), authority.IDLE))
            query = await asyncio.wait_for(reader.readexactly(length), authority.IDLE)
            target = delegations.target(query)
            answer = authority.answer(query) if target is None else await _relay_tcp(target, query)
            if answer is None:
                break
            writer.write(dns.tcp_frame(answer))
            await writer.drain()
    writer.close()


async def _relay_tcp(server: tuple[str, int], query: bytes) -> bytes | None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*server), RELAY_TIMEOUT)
    except (TimeoutError, OSError):
        return None
    try:
        writer.write(dns.tcp_frame(query))
        await writer.drain()
        (length,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), RELAY_TIMEOUT))
        return await asyncio.wait_for(reader.readexactly(length), RELAY_TIMEOUT)
    except (TimeoutError, OSError, asyncio.IncompleteReadError):
        return None
    finally:
        writer.close()
