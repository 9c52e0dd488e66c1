"""One proxy worker's run loop: the front on the worker's port, mitmproxy's master behind it, and the sink.

`run_worker` runs until cancelled or until a part of it ends (then the worker exits and the supervisor locks the
gateway down). What the worker enforces comes from the `Gate` it is given; swapping ``gate.policy`` (the
supervisor's reload, see `egress.gateway.control`) changes it for every new connection.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mitmproxy import connection, options
from mitmproxy import log as mitmlog
from mitmproxy.addons import core, proxyserver, tlsconfig
from mitmproxy.master import Master

from egress.decisions import Reporter
from egress.flowlog import FlowSink, Meter
from egress.proxy.front import Front, original_destination
from egress.proxy.gate import Gate
from egress.proxy.idle import IDLE_TIMEOUT, Held, IdleBound
from egress.proxy.mitm import linger
from egress.proxy.mitm.addon import EgressAddon
from egress.proxy.mitm.crashes import CrashGuard
from egress.proxy.mitm.quiet import QuietWatch
from egress.proxy.openflows import OpenFlows

log = logging.getLogger("egress.proxy")

START_TIMEOUT = 30.0
"""Seconds mitmproxy's server may take to start before the worker gives up (and the gateway locks down)."""
STOP_WAIT = 3.0
"""Seconds a stopping worker waits for its front and mitmproxy to finish their cancellation."""
SINK_SILENCE = 3.0
"""Seconds the sink waits for a client that says nothing before closing (a server-first protocol's client)."""


async def run_worker(
    gate: Gate,
    reporter: Reporter,
    port: int,
    confdir: str,
    upstream_ca: str | None = None,
    host: str | None = None,
    destination: Callable[[socket.socket], tuple[str, int]] | None = None,
    open_flows: OpenFlows | None = None,
    flows: FlowSink | None = None,
    idle: IdleBound | None = None,
    idle_timeout: float = IDLE_TIMEOUT,
) -> None:
    """Run one proxy worker on ``port`` (where nftables redirects sandbox TCP).

    `egress.proxy.front.Front` accepts on ``port`` and relays allowed TLS itself; every other connection goes to
    mitmproxy's transparent-mode server instance (which listens only on an unused loopback port). ``host``: the
    one address to listen on (default: the front's own default); ``destination``: where an accepted connection was
    going, for the front (default: nftables' ``SO_ORIGINAL_DST``; tests without nftables give their own);
    ``open_flows``: where the front and the addon keep the connections they let through while open; ``flows``:
    told each connection let through when it ends, for the sandboxes that keep a flow log (`egress.flowlog`);
    ``idle``: the bound of the connections that have not spoken yet (`egress.proxy.idle`; default: its defaults),
    followed into mitmproxy: a connection counts until its client's first byte reaches mitmproxy; ``idle_timeout``:
    seconds a connection inside mitmproxy may go without progress before it is closed and recorded
    (`egress.proxy.mitm.quiet`)."""
    opts = options.Options()
    sink = await asyncio.start_server(_sink, "127.0.0.1", 0)
    servers: Any = ()
    try:  # however the worker ends, nothing of it is left listening (below)
        sink_address = sink.sockets[0].getsockname()[:2]
        # A lean master: only the addons the gateway needs. Every hook walks every addon, and DumpMaster's 34
        # made connection setup several times dearer (docs/gateway-performance.md).
        master = Master(opts, with_termlog=False)
        # The master also copies every record of every logger into its deprecated ``add_log`` hook (a second format,
        # a self-pipe write and a walk of the addons per record: per allowed request's decision line, as much as the
        # fast relay itself); no addon here takes that hook, and the root logger's own handler then writes alone.
        for handler in list(logging.getLogger().handlers):
            if isinstance(handler, mitmlog.LegacyLogEvents):
                handler.uninstall()
        server = proxyserver.Proxyserver()
        master.addons.add(core.Core(), server, tlsconfig.TlsConfig())
        sink_at = (str(sink_address[0]), int(sink_address[1]))
        quiet = QuietWatch(idle_timeout)
        addon = EgressAddon(
            gate,
            reporter,
            sink_at,
            _severer(server),
            open_flows,
            flows,
            (quiet, lambda c: server.connections.get(c.id)),
        )
        quiet.on_refused = addon.refused
        master.addons.add(addon)
        # Each server connection resets if this worker dies (a graceful end stays graceful): red team 7. Armed as
        # mitmproxy dials it, which also names the peer of a server that reset before the transport was made
        # (red team 16); the addon checks each connection mitmproxy reports connected.
        master.addons.add(linger.Lingers.install(lambda c: server.connections.get(c.id)))
        guard = CrashGuard.install(server, addon.crashed)
        settings: dict[str, Any] = {
            "mode": ["transparent@127.0.0.1:0"],
            "connection_strategy": "eager",
            "confdir": confdir,
            # After a 101 that is not a WebSocket mitmproxy would relay the connection raw; the addon kills such
            # flows first, and without rawtcp mitmproxy closes them itself too (belt and braces).
            "rawtcp": False,
            # The idle timeout is ours (`quiet`, recorded); mitmproxy's own (reset by any event, closing unrecorded)
            # stays behind it as a backstop, and its HTTP/2 keep-alive pings would be progress that never ends.
            "tcp_timeout": int(max(600.0, 2 * idle_timeout)),
            "http2_ping_keepalive": 0,
        }
        if upstream_ca:
            settings["ssl_verify_upstream_trusted_ca"] = upstream_ca
        opts.update(**settings)
        servers = master.addons.get("proxyserver").servers
        running = asyncio.create_task(master.run())
        deadline = time.monotonic() + START_TIMEOUT
        while not (len(servers) and all(instance.is_running for instance in servers)):
            failed = [instance.last_exception for instance in servers if instance.last_exception is not None]
            if failed:
                raise RuntimeError(f"mitmproxy's server did not start: {failed[0]}")
            if running.done():
                await running  # mitmproxy failed to start: raise its error
                raise RuntimeError("mitmproxy stopped before its server started")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mitmproxy's server did not start within {START_TIMEOUT} s")
            await asyncio.sleep(0.01)
        [instance] = list(servers)

        bound = idle if idle is not None else IdleBound()
        handoff = _handoff(instance, addon, bound)
        the_front = Front(
            gate,
            reporter,
            handoff,
            destination or original_destination,
            open_flows,
            flows,
            idle=bound,
            idle_timeout=idle_timeout,
        )
        front = asyncio.create_task(the_front.serve(port) if host is None else the_front.serve(port, hosts=(host,)))
        watching = asyncio.create_task(quiet.run(addon.idle_closed))
        try:
            await asyncio.wait({running, front, watching}, return_when=asyncio.FIRST_COMPLETED)
            if watching.done():
                watching.result()  # the idle timeout's watch failed (its error ends the worker)
            if front.done():
                front.result()  # the front failed (its error ends the worker)
                raise RuntimeError("the proxy worker's front stopped")
            running.result()  # mitmproxy shut down (its error, if any, ends the worker)
        finally:  # also when the worker is told to stop (cancelled)
            guard.uninstall()
            front.cancel()  # first: its listening sockets close, nothing more is accepted
            watching.cancel()
            running.cancel()
            # Wait for both to have really stopped (bounded): the caller flushes records next, with no new connection.
            await asyncio.wait({front, running}, timeout=STOP_WAIT)
    finally:
        # The sink, and mitmproxy's own listener, which its master leaves open when it ends (no addon stops a
        # server on the done hook): a worker that failed to start, in a process that goes on (tests, a caller
        # that retries), must not leave a listener that takes connections to nowhere (CI, stop 32).
        sink.close()
        await _stop_servers(servers)


async def _stop_servers(servers: Any) -> None:
    """Stop mitmproxy's server ``instances`` that still listen (an error is logged: the others still stop)."""
    for instance in list(servers):
        if instance.is_running:
            try:
                await instance.stop()
            except Exception:
                log.exception("mitmproxy's server did not stop")


def _handoff(
    instance: Any, addon: EgressAddon, idle: IdleBound
) -> Callable[[socket.socket, tuple[str, int]], Awaitable[None]]:
    """Gives a connection the front did not take to mitmproxy's server ``instance``, its bytes each way counted
    for the flow log (`EgressAddon.meters`, read when the client disconnects). One that has not spoken yet stays
    in the ``idle`` bound until its first byte arrives (the bound closes it by aborting its transport). ``peer``:
    the client's address as the front accepted it, mitmproxy's peer name when the client reset the connection
    after the front's last look (red team 15: the socket no longer names its peer, and the attempt was lost)."""

    async def handoff(conn: socket.socket, peer: tuple[str, int]) -> None:
        meter = Meter(time.time())
        fd = conn.fileno()
        held = idle.held(fd)
        try:
            reader, writer = await _metered_streams(conn, meter, None if held is None else (idle, fd, held), peer)
        except OSError as exc:
            log.debug("handoff: %s", exc)
            conn.close()
            return
        key = (str(peer[0]), int(peer[1]))
        addon.meters[key] = meter
        try:
            await instance.handle_stream(reader, writer)
        except Exception:
            log.exception("mitmproxy failed on a connection; closed")
            writer.close()
        finally:
            addon.meters.pop(key, None)
            if held is not None:
                idle.release(fd, held)

    return handoff


class _MeteredProtocol(asyncio.StreamReaderProtocol):
    """Counts what the client sent as mitmproxy's reader receives it."""

    def __init__(
        self, reader: asyncio.StreamReader, meter: Meter, idle: tuple[IdleBound, int, Held] | None = None
    ) -> None:
        super().__init__(reader)
        self.meter = meter
        self.idle = idle
        """The connection's hold in the idle bound until its first byte."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.idle is not None and isinstance(transport, asyncio.Transport):
            self.idle[2].close = transport.abort  # the idle bound's close, from now on

    def data_received(self, data: bytes) -> None:
        if self.idle is not None:
            bound, fd, held = self.idle
            self.idle = None
            bound.release(fd, held)
        self.meter.up += len(data)
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        # A client's reset ends its stream after the bytes it sent, as a FIN does: asyncio's reader raises a
        # connection's error before the bytes it holds, so a reset that came before mitmproxy's first read lost
        # the attempt unread and unrecorded (red team 15). Read and judged, nothing is forwarded that a FIN's
        # bytes would not be; the writes towards the gone client fail as before.
        super().connection_lost(None if isinstance(exc, ConnectionError) else exc)


class _MeteredWriter(asyncio.StreamWriter):
    """Counts what mitmproxy writes to the client (its only write call on a client stream is `write`)."""

    def __init__(
        self,
        transport: asyncio.WriteTransport,
        protocol: _MeteredProtocol,
        reader: asyncio.StreamReader,
        loop: asyncio.AbstractEventLoop,
        peer: tuple[str, int] | None = None,
    ) -> None:
        super().__init__(transport, protocol, reader, loop)
        self.meter = protocol.meter
        self.peer = peer
        """The client's address as the front accepted it (the transport's peer name is None once it reset)."""

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        found = super().get_extra_info(name, default)
        if name == "peername" and found is None:
            return self.peer
        return found

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.meter.down += len(data)
        super().write(data)


async def _metered_streams(
    conn: socket.socket,
    meter: Meter,
    idle: tuple[IdleBound, int, Held] | None = None,
    peer: tuple[str, int] | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """`asyncio.open_connection` (``sock=conn``) with the bytes each way counted into ``meter``; ``idle``: the
    connection's hold in the idle bound, released at its first byte; ``peer``: the peer name when the socket no
    longer has one (its client reset it)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(loop=loop)
    protocol = _MeteredProtocol(reader, meter, idle)
    transport, _ = await loop.create_connection(lambda: protocol, sock=conn)
    return reader, _MeteredWriter(transport, protocol, reader, loop, peer)


def _severer(server: proxyserver.Proxyserver) -> Callable[[connection.Client], None]:
    """Closes both sides of a live client connection, as mitmproxy does for a layer's ``CloseConnection``: its
    transports' tasks are cancelled, the layers get ``ConnectionClosed``, nothing more is relayed.

    Each side is aborted first (`egress.proxy.mitm.linger.abort`): mitmproxy's own close (``writer.close()``) sends
    what its write buffer and the socket's still hold, then the end, and mitmproxy buffers a WebSocket's messages
    without bound while the server reads slowly. Red team 7 (tests/security/test_redteam_splice_close.py): 10 MB of
    a WebSocket upload cut by ``on_apply: close_forbidden`` crossed after the cut."""

    def sever(client: connection.Client) -> None:
        handler = server.connections.get(client.id)
        if handler is None:
            return
        for conn, transport in list(handler.transports.items()):
            if conn.connected:
                linger.abort(transport.writer)
                handler.close_connection(conn)

    return sever


async def _sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Holds a connection to a refused destination: reads and discards, never answers, closes on silence."""
    try:
        while await asyncio.wait_for(reader.read(65536), SINK_SILENCE):
            pass
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()
