"""The proxy worker's front door: takes the sandbox connections nftables redirects to the worker's port and relays
allowed TLS itself; everything else goes to mitmproxy untouched.

For each connection the front peeks (``MSG_PEEK``: nothing is consumed) at the client's first bytes. When they are a
whole TLS ClientHello that `Gate` passes through (allowed, or let through and recorded: a detector set to
``record``, report mode's would-block; not on the sandbox's decrypt list) and the destination may be dialled, the
front reports what is worth recording, dials the original destination and relays both directions on its two sockets
(`egress.proxy.splice`): a fraction of what the same connection costs in mitmproxy's layers
(docs/gateway-performance.md). Anything else (a source outside every sandbox, a destination no rule allows, a client
that says nothing within `PEEK_WAIT`, a ClientHello that is not whole within `HELLO_WAIT` or is bigger than the
peek, plain HTTP, interception, inspection, bytes that do not parse) is handed to mitmproxy as it is (`Handoff`),
which decides again from the same bytes and does what it always did: the front only takes what it can finish, and
blocks in two places. First bytes the gate refuses are recorded and closed before a handoff, as the addon would
(`egress.proxy.firstlook`: no mitmproxy, no dial). And every TLS connection the front relays is relayed through a
`egress.proxy.relay.Watch`: a blocking TLS shape finding closes both sides before the chunk that completed it is
forwarded, and the front reports it (SSH inside TLS; mining told from the shape, `egress.detect.miningshape`:
recorded, or blocked where the sandbox's ``detectors.mining_shape`` says ``block``). That holds for a host rule's
bound name as for a network rule (issue 9: Stratum inside TLS to a bound name is no payload detector's to see). The
shapes ordinary TLS can take too (`egress.detect.tlsshape.SUSPECTED`: TLS in TLS, keystroke echo) are recorded only
through a network rule (`Decision.watch`), where the policy names a destination without a name; to a named host they
would be noise. Every passthrough is the front's to take: mitmproxy sees only TLS it must decrypt and TLS the front
could not judge, and relays a host rule's through the same watch (`egress.proxy.upgraded`) while it refuses a
network rule's it would relay unwatched (`egress.proxy.gate`); once a client's first bytes look like TLS the front
waits `HELLO_WAIT` for the rest.

Pure asyncio and `egress.proxy.gate`; mitmproxy stays in `egress.proxy.mitm`.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from typing import Final

from egress.decide import Enforcement, Verdict, decide_idle_limit, decide_watched
from egress.decisions import DecidedFlow, Reporter
from egress.detect import miningshape, tls, tlsshape
from egress.detect.base import Finding, FlowMeta
from egress.flowlog import EndedFlow, FlowSink
from egress.policy.model import DetectorAction, Sandbox
from egress.proxy.connect import connect
from egress.proxy.firstlook import close_refused, refusal
from egress.proxy.gate import HEAD_WAIT_LIMIT, Decision, Gate, Kind, flow_meta
from egress.proxy.httpfast import PlainHttp
from egress.proxy.idle import IDLE_TIMEOUT, Held, IdleBound
from egress.proxy.lastlook import last_look, reset_before_served
from egress.proxy.openflows import OpenFlows
from egress.proxy.poller import Poller, Timer
from egress.proxy.relay import Watch
from egress.proxy.splice import Relay, sandbox_side
from egress.replay import Kind as Asked
from egress.replay import Question

log = logging.getLogger("egress.proxy")

PEEK_WAIT: Final = 1.0
"""Seconds the front waits for a client's first bytes (a TLS client sends its ClientHello at once); after that the
connection is mitmproxy's (a server-first protocol, whose greeting is late by as much). A host rule's TLS that
comes later is watched there too; a network rule's is refused there, so this is also how late a loaded machine may
let such a client's hello come (0.1 s was too short beside busy processes)."""
HELLO_WAIT: Final = 5.0
"""Seconds the front waits for the rest of a ClientHello once the first bytes look like TLS: TLS through a network
rule is watched only here (mitmproxy refuses it), so a slow hello must not push it there."""
PARTIAL_WAIT: Final = 0.002
"""Seconds between peeks while a ClientHello is still arriving."""
DIAL_TIMEOUT: Final = 10.0
RETRY: Final = 0.5
"""Seconds a listener rests after accept failed for a reason other than "nothing to accept" (out of descriptors)."""
BACKLOG: Final = 1024
ACCEPT_BATCH: Final = 64
"""Connections accepted per wake-up of a listener: a burst (thousands of connections at once) is taken a batch at a
time, with the loop's other work (the supervisor's ping, clients already accepted) between two batches."""
IDLE_RECORD_EVERY: Final = 1.0
"""Seconds between two records of one sandbox's connections closed by the idle bound (each counts those since)."""
SO_ORIGINAL_DST: Final = 80
SOL_IPV6: Final = 41

Handoff = Callable[[socket.socket, tuple[str, int]], Awaitable[None]]
"""Gives an accepted connection, nothing read from it, and its client's address as accepted, to mitmproxy; never
raises (closes what it cannot serve)."""


_family: Final[Callable[[socket.socket], int]] = _socket.socket.family.__get__
"""A socket's family as the plain int (`socket.socket.family` converts it to `socket.AddressFamily` each time, a
few µs of a new connection)."""


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """Where the client meant to connect before nftables redirected it (``SO_ORIGINAL_DST``). The socket's family
    says which (the front's IPv6 listener is IPv6-only: no IPv4-mapped peers), without asking the kernel."""
    if _family(sock) == socket.AF_INET:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port, address = struct.unpack_from("!2xH4s", raw)
        return socket.inet_ntop(socket.AF_INET, address), port
    raw = sock.getsockopt(SOL_IPV6, SO_ORIGINAL_DST, 28)
    port, address = struct.unpack_from("!2xH4x16s", raw)
    return socket.inet_ntop(socket.AF_INET6, address), port


class Front:
    """Accepts on the worker's port (IPv4 and IPv6) and serves each connection as the module docstring says."""

    def __init__(
        self,
        gate: Gate,
        reporter: Reporter,
        handoff: Handoff,
        destination: Callable[[socket.socket], tuple[str, int]] = original_destination,
        open_flows: OpenFlows | None = None,
        flows: FlowSink | None = None,
        plain_http: bool = True,
        idle: IdleBound | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        """``destination``: where an accepted connection was going (`original_destination` behind nftables);
        ``open_flows``: where relayed connections are kept while open (a reload may close them); ``flows``: told
        each relayed connection's end, for the sandboxes that keep a flow log (`egress.flowlog`); ``plain_http``:
        serve plainly allowed keep-alive HTTP here (`egress.proxy.httpfast`) instead of in mitmproxy; ``idle``: the
        bound of the connections that have not spoken yet (`egress.proxy.idle`; default: its default limits);
        ``idle_timeout``: seconds a fast-path connection may wait for its next request (mitmproxy's idle timeout)."""
        self.plain_http = PlainHttp(gate, reporter, open_flows, flows, idle_timeout) if plain_http else None
        self.open_flows = open_flows
        self.flows = flows
        self.gate = gate
        self.reporter = reporter
        self.handoff = handoff
        self.destination = destination
        self.relayed = 0
        """Connections the front relayed itself."""
        self.handed_off = 0
        """Connections given to mitmproxy."""
        self.watch_blocked = 0
        """Watched connections closed on a TLS shape finding."""
        self.refused = 0
        """Connections refused on their first bytes before a handoff (`egress.proxy.firstlook`)."""
        self.idle = idle if idle is not None else IdleBound()
        self.idle.on_closed = self._idle_closed
        self._idle_reported: dict[str, tuple[float, int]] = {}
        """Per sandbox: when its idle closes were last recorded, and its count of closes then."""
        self._idle_pending: set[str] = set()
        """The sandboxes whose idle closes wait for the end of their record interval."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._listeners: list[socket.socket] = []
        self._poller: Poller | None = None

    @property
    def poller(self) -> Poller:
        """The epoll of the front's own sockets (listeners, dials, relays) on the running loop (`egress.proxy.poller`:
        one loop callback per wake-up for all of them)."""
        loop = asyncio.get_running_loop()
        if self._poller is None or self._poller.loop is not loop or self._poller.closed:
            self._poller = Poller(loop)
        return self._poller

    async def serve(self, port: int, hosts: tuple[str, ...] = ("0.0.0.0", "::")) -> None:
        """Listen on ``port`` of ``hosts`` (an IPv6 one is skipped when the host has no IPv6) and serve until
        cancelled."""
        for host in hosts:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            try:
                listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            except OSError as exc:
                if family == socket.AF_INET6 and exc.errno == errno.EAFNOSUPPORT:  # IPv6 disabled in the kernel
                    continue
                raise
            try:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                # No Nagle on what it accepts (they inherit it: a syscall less per connection): small writes (an
                # HTTP head, then its body) must not wait for the client's delayed ACK. asyncio sets it only on
                # sockets made with proto=IPPROTO_TCP, which accepted ones are not.
                listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sandbox_side(listener)
                if family == socket.AF_INET6:
                    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                listener.bind((host, port))
            except OSError as exc:
                listener.close()
                if family == socket.AF_INET6 and exc.errno in {errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT}:
                    continue  # no IPv6 on this host; any other failure (the port taken) ends the worker
                raise
            listener.listen(BACKLOG)
            listener.setblocking(False)
            self._listeners.append(listener)
        poller = self.poller
        for listener in self._listeners:
            poller.add_reader(listener.fileno(), self._accept_all, listener)
        try:
            await asyncio.Future()  # until cancelled
        finally:
            for listener in self._listeners:
                poller.remove_reader(listener.fileno())
                listener.close()

    def _accept_all(self, listener: socket.socket) -> None:
        """Accept up to `ACCEPT_BATCH` connections waiting on ``listener`` (the rest at the loop's next turn: the
        listener stays readable)."""
        for _ in range(ACCEPT_BATCH):
            try:
                conn, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, or the like: pause this listener, then try again
                log.error("front: accept on %s failed (%s); retrying in %.1f s", listener.getsockname(), exc, RETRY)
                self.poller.remove_reader(listener.fileno())
                self.poller.call_later(RETRY, self._resume_accepting, listener)
                return
            try:
                conn.setblocking(False)  # Nagle is off already: Linux copies TCP_NODELAY from the listener (`serve`)
            except OSError:  # reset before we got to it
                conn.close()
                continue
            self._accepted(conn, peer)

    def _resume_accepting(self, listener: socket.socket) -> None:
        if listener in self._listeners and listener.fileno() != -1:
            self.poller.add_reader(listener.fileno(), self._accept_all, listener)

    def _accepted(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        """Serve a new connection: at once, in callbacks alone, when its first bytes are already a ClientHello to
        pass through (most TLS clients' hello is there by the time the front accepts); else in a task that waits
        for them, or serves plain HTTP, or hands the connection off."""
        known: _Known | None = None
        try:
            found = self._known(conn, peer)
            if found is _PASSED:
                return  # passed through: the dial is under way
            known = found if isinstance(found, tuple) else None
        except OSError as exc:  # the client went away, or its socket was odd: mitmproxy will see the same
            log.debug("front: %s:%s: %s", peer[0], peer[1], exc)
            self._task(self._hand_off(conn, peer))
            return
        except Exception:  # a bug here must not lose the connection's inspection: mitmproxy decides instead
            log.exception("front: %s:%s: handed to mitmproxy after an error", peer[0], peer[1])
            self._task(self._hand_off(conn, peer))
            return
        if known is None:
            self._task(self._serve_one(conn, peer))
            return
        # Nothing to read yet: idle until the client speaks, within the idle bound (which may close the oldest).
        fd = conn.fileno()
        held = Held(known[0].name, known[1], known[2], _nothing)
        self.idle.hold(fd, held)
        _FirstBytes(self, conn, peer, known, fd, held)

    def _serve_later(
        self, conn: socket.socket, peer: tuple[str, int], known: _Known, idle: tuple[int, Held], started: float
    ) -> None:
        """Serve in a task a connection `_FirstBytes` did not pass through (its first bytes are not a whole
        ClientHello to pass, or did not come within `PEEK_WAIT`), as from its accept at ``started``."""
        task = self._task(self._serve_one(conn, peer, known, idle, started))
        if idle[1].active:
            idle[1].close = task.cancel  # the task closes the connection (`_serve_one`)

    def _task(self, work: Coroutine[None, None, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _idle_closed(self, held: Held, count: int) -> None:
        """The idle bound closed ``held``: record it, at most once every `IDLE_RECORD_EVERY` per sandbox (the
        record counts the closes since the last one; those within the interval are recorded at its end)."""
        now = time.time()
        last = self._idle_reported.get(held.sandbox, (0.0, 0))[0]
        wait = last + IDLE_RECORD_EVERY - now
        if wait <= 0:
            self._record_idle(held, count)
        elif held.sandbox not in self._idle_pending:
            self._idle_pending.add(held.sandbox)
            asyncio.get_running_loop().call_later(wait, self._record_idle_pending, held)

    def _record_idle_pending(self, held: Held) -> None:
        self._idle_pending.discard(held.sandbox)
        self._record_idle(held, self.idle.closed.get(held.sandbox, 0))

    def _record_idle(self, held: Held, count: int) -> None:
        """Record ``held``'s sandbox's idle closes since its last such record (``count`` in all), on ``held``."""
        now = time.time()
        _, counted = self._idle_reported.get(held.sandbox, (0.0, 0))
        self._idle_reported[held.sandbox] = (now, count)
        if count <= counted:
            return
        log.warning("front: sandbox %s: %d idle connections closed (%d in all; bound %d per sandbox, %d in all)",
                    held.sandbox, count - counted, count, self.idle.per_sandbox, self.idle.limit)  # fmt: skip
        verdict = decide_idle_limit(count - counted, count)
        self.reporter.report(DecidedFlow(now, held.sandbox, *held.source, *held.dst, "tcp", "", verdict))

    def _known(self, conn: socket.socket, peer: tuple[str, int]) -> _Known | _Passed | None:
        """What the front knows of a new connection without waiting: `_Passed` when its first bytes, peeked, were
        a ClientHello the gate passes through (the dial is started); else its sandbox, source and destination when
        it may still be one (the task waits for its first bytes), or None when it is not (no sandbox, a
        destination no rule could allow)."""
        sandbox = self.gate.sandbox(str(peer[0]))
        if sandbox is None:
            return None
        dst = self.destination(conn)
        if self.gate.on_connect(sandbox, *dst).action is Enforcement.BLOCK:
            return None
        source = (str(peer[0]), int(peer[1]))  # an IPv6 peer is a 4-tuple
        try:
            data = conn.recv(HEAD_WAIT_LIMIT, socket.MSG_PEEK)
        except BlockingIOError:
            return sandbox, source, dst
        decision = _decided(data, self.gate, sandbox, flow_meta(source, dst))
        if decision is _UNDECIDED:
            return sandbox, source, dst
        if not isinstance(decision, Decision) or decision.kind is not Kind.PASSTHROUGH:
            return None
        self._pass(conn, sandbox, source, dst, decision)
        return _PASSED

    async def _serve_one(
        self,
        conn: socket.socket,
        peer: tuple[str, int],
        known: _Known | None = None,
        idle: tuple[int, Held] | None = None,
        started: float | None = None,
    ) -> None:
        """``known``: what `_known` found (its first bytes not there yet, or not a whole ClientHello); ``idle``:
        its descriptor and hold in the idle bound, released when it speaks or ends (a handoff that knows the bound
        releases it when the client speaks in mitmproxy); ``started``: the loop's time at its accept (the waits for
        its first bytes count from there; default: now). Cancelled (the idle bound closed it): closes it."""

        def spoke() -> None:
            if idle is not None:
                self.idle.release(*idle)

        handing = False
        try:
            try:
                if known is not None and await self._relay_if_passthrough(conn, *known, spoke, started):
                    return
                if self.plain_http is not None and await self.plain_http.serve(conn, peer, self.destination(conn)):
                    return  # plain HTTP served here; else handed off with the request it stopped at unread
            except OSError as exc:  # the client went away, or its socket was odd: mitmproxy will see the same
                log.debug("front: %s:%s: %s", peer[0], peer[1], exc)
            except Exception:  # a bug here must not lose the connection's inspection: mitmproxy decides instead
                log.exception("front: %s:%s: handed to mitmproxy after an error", peer[0], peer[1])
            handing = True
            await self._hand_off(conn, peer)
        except asyncio.CancelledError:
            if idle is not None and not idle[1].active and not handing:
                conn.close()  # closed by the idle bound before anything was read: nothing forwarded
            raise
        finally:
            spoke()

    async def _hand_off(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        """Give ``conn`` to mitmproxy; one whose client ``peer`` reset it already (which mitmproxy would close
        unread) is judged on the bytes it left, recorded, and closed here (`egress.proxy.lastlook`), and one whose
        first bytes the gate refuses is recorded and closed here too (`egress.proxy.firstlook`). A reset after
        these looks is mitmproxy's to read: the handoff names the peer, and ends the stream after the bytes
        (`egress.proxy.mitm.server`)."""
        if reset_before_served(conn):
            ended = last_look(conn, peer, self.gate, self.destination)
            if ended is not None:
                self.reporter.report(ended)
            conn.close()
            return
        refused = refusal(conn, peer, self.gate, self.destination)
        if refused is not None:
            self.refused += 1
            try:
                self.reporter.report(refused)  # recorded before the close, as mitmproxy's refusal is
            finally:  # closed whatever the reporter does: nothing of it is forwarded
                close_refused(conn)
            return
        self.handed_off += 1
        await self.handoff(conn, peer)  # never raises: it closes what it cannot serve

    async def _relay_if_passthrough(
        self,
        conn: socket.socket,
        sandbox: Sandbox,
        source: tuple[str, int],
        dst: tuple[str, int],
        spoke: Callable[[], None] = lambda: None,
        started: float | None = None,
    ) -> bool:
        """Relay the connection and return True if it is allowed TLS to pass through; else return False having
        read nothing from it. ``spoke``: called once its first bytes are there; ``started``: see `_serve_one`."""
        decision = await self._first_decision(conn, self.gate, sandbox, flow_meta(source, dst), spoke, started)
        if decision is None or decision.kind is not Kind.PASSTHROUGH:
            return False
        self._pass(conn, sandbox, source, dst, decision)
        return True

    def _pass(
        self, conn: socket.socket, sandbox: Sandbox, source: tuple[str, int], dst: tuple[str, int], decision: Decision
    ) -> None:
        """Pass the connection through (``decision``): report, dial, then relay; from here the connection is the
        front's (never handed off once the relay has it)."""
        # Every passthrough is the front's, recorded ones too (a detector set to record, report mode's would-block):
        # the front relays with the least cost, and mitmproxy refuses a network rule's TLS it would relay unwatched.
        recorded = decision.verdict
        reported = recorded or decision.allow
        if recorded is not None:  # before the dial: a destination that refuses it leaves the record all the same
            self.reporter.report(DecidedFlow(time.time(), sandbox.name, *source, *dst, "tcp", decision.host, recorded))
        watch = self._watch(sandbox, source, dst, decision.host, suspicions=decision.watch)
        allowed = reported if recorded is None else None  # reported once the destination took the connection

        def dialled(upstream: socket.socket | None, error: BaseException | None) -> None:
            if upstream is None:
                log.info("front: %s:%d unreachable (%s): client closed", dst[0], dst[1], error)
                conn.close()
                return
            try:
                self._relay(conn, upstream, watch, sandbox, source, dst, decision, allowed)
            except Exception:  # before the relay had the sockets: mitmproxy decides instead, as before the dial
                for sock in (conn, upstream):  # out of the front's epoll first: mitmproxy's loop takes the client
                    self.poller.forget(sock.fileno())
                upstream.close()
                log.exception("front: %s:%s: handed to mitmproxy after an error", source[0], source[1])
                self._task(self._hand_off(conn, source))

        connect(self.poller, dst, DIAL_TIMEOUT, dialled)

    def _relay(
        self,
        conn: socket.socket,
        upstream: socket.socket,
        watch: Watch,
        sandbox: Sandbox,
        source: tuple[str, int],
        dst: tuple[str, int],
        decision: Decision,
        allowed: Verdict | None,
    ) -> None:
        """Relay a dialled passthrough; ``allowed``: its allow, reported now that the destination took it."""
        if allowed is not None:
            self.reporter.report(DecidedFlow(time.time(), sandbox.name, *source, *dst, "tcp", decision.host, allowed))
        reported = decision.verdict or decision.allow
        relay = Relay(conn, upstream, watch, loop=self.poller)
        self._keep(relay, source, dst, decision.host)
        if reported is not None and sandbox.flow_log and self.flows is not None:
            self._log_end(relay, EndedFlow(sandbox.name, *source, *dst, "tcp", decision.host,
                          reported.rule, reported.action.value, 0, 0, time.time(), 0.0))  # fmt: skip
        relay.start()  # reads the ClientHello and relays it
        self.relayed += 1

    def _keep(self, relay: Relay, source: tuple[str, int], dst: tuple[str, int], sni: str) -> None:
        """Track the relay while it is open, as the TLS connection it was decided as (`egress.proxy.openflows`)."""
        if self.open_flows is None:
            return
        flows = self.open_flows
        token = flows.add(Question(Asked.TLS, source[0], dst[0], dst[1], sni or None), relay.close)
        relay.on_lost = lambda: flows.discard(token)

    def _log_end(self, relay: Relay, started: EndedFlow) -> None:
        """Tell the flow log of the relay's end, with the bytes each side sent (the client's: up)."""
        sink, then = self.flows, relay.on_lost
        assert sink is not None

        def lost() -> None:
            if then is not None:
                then()
            up, down = relay.up.moved, relay.down.moved
            sink.flow_ended(replace(started, up=up, down=down, ended=time.time()))

        relay.on_lost = lost

    def _watch(
        self, sandbox: Sandbox, source: tuple[str, int], dst: tuple[str, int], host: str, suspicions: bool = True
    ) -> Watch:
        """A TLS shape watcher whose finding is decided and reported here (the one block the front makes).
        ``suspicions``: report the shapes ordinary TLS can take too (`tlsshape.SUSPECTED`); without, they are
        dropped unreported (TLS to a host rule's bound name: see the module docstring)."""

        def on_finding(finding: Finding) -> bool:
            if not suspicions and finding.detector == tlsshape.NAME and finding.protocol in tlsshape.SUSPECTED:
                return False
            verdict = decide_watched(sandbox, finding)  # the policy's mining_shape action: record (default) or block
            self.reporter.report(DecidedFlow(time.time(), sandbox.name, *source, *dst, "tcp", host, verdict))
            if verdict.action is Enforcement.BLOCK:
                self.watch_blocked += 1
                return True
            return False

        shape = sandbox.detectors.mining_shape is not DetectorAction.ALLOW
        window = float(sandbox.detectors.mining_shape_window)
        return Watch(on_finding, mining=miningshape.MiningShape(window) if shape else None, suspicions=suspicions)

    @staticmethod
    async def _first_decision(
        conn: socket.socket,
        gate: Gate,
        sandbox: Sandbox,
        meta: FlowMeta,
        spoke: Callable[[], None] = lambda: None,
        started: float | None = None,
    ) -> Decision | None:
        """The gate's decision on the client's first bytes, peeked; None when they are not TLS, do not come within
        `PEEK_WAIT` of ``started`` (the loop's time; default: now), or never make a whole ClientHello. ``spoke``:
        called when the first bytes are there."""
        loop = asyncio.get_running_loop()
        if started is None:
            started = loop.time()
        deadline = started + PEEK_WAIT
        while True:
            try:
                data: bytes | None = conn.recv(HEAD_WAIT_LIMIT, socket.MSG_PEEK)
            except BlockingIOError:
                data = None
            if data is not None:
                spoke()
                decision = _decided(data, gate, sandbox, meta)
                if decision is not _UNDECIDED:
                    return decision if isinstance(decision, Decision) else None
                deadline = max(deadline, started + HELLO_WAIT)
            left = deadline - loop.time()
            if left <= 0:
                return None
            if data is None:
                await _readable(conn, left)
            else:
                await asyncio.sleep(PARTIAL_WAIT)  # the socket stays readable while the first bytes wait unread


def _nothing() -> None:
    """A hold's close until its task is made."""


class _FirstBytes:
    """A new connection whose first bytes were not there at its accept, waited for in the front's poller: a reader
    callback and a `PEEK_WAIT` timer, no task (about a quarter of the lab's connections come this way: a task, its
    coroutine, asyncio's reader registration and timer handle cost more than the rest of their accept). When they
    come and are a whole ClientHello the gate passes through, the connection is passed through here, as `_known`
    does; anything else (other bytes, a part of a hello, an error, nothing within `PEEK_WAIT`) goes to
    `Front._serve_one` as from its accept, which peeks again and serves it as it always did. The idle bound's close
    (`egress.proxy.idle`) stops the wait and closes the connection: nothing was read from it."""

    __slots__ = ("front", "conn", "peer", "known", "fd", "held", "started", "timer")

    def __init__(
        self, front: Front, conn: socket.socket, peer: tuple[str, int], known: _Known, fd: int, held: Held
    ) -> None:
        self.front, self.conn, self.peer, self.known, self.fd, self.held = front, conn, peer, known, fd, held
        poller = front.poller
        self.started = poller.time()
        self.timer: Timer | None = None
        try:
            poller.add_reader(fd, self._readable)
            self.timer = poller.call_later(PEEK_WAIT, self._waited)
        except Exception:  # not watched (the epoll refused it): the task waits instead, as it always did
            self._later()
            return
        held.close = self._dropped

    def _stop(self) -> None:
        """Out of the poller (before the socket is closed or served elsewhere), the timer cancelled."""
        self.front.poller.remove_reader(self.fd)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _readable(self) -> None:
        conn, (sandbox, source, dst) = self.conn, self.known
        try:
            data = conn.recv(HEAD_WAIT_LIMIT, socket.MSG_PEEK)
        except BlockingIOError:
            return  # woken for nothing: the reader and the timer stay
        except Exception:  # the client went away, or its socket was odd: served as before, which sees the same
            self._later()
            return
        self._stop()
        try:
            decision = _decided(data, self.front.gate, sandbox, flow_meta(source, dst))
        except Exception:  # a bug in the decision: `_serve_one` decides again, and hands off on the same error
            self._later()
            return
        if not isinstance(decision, Decision) or decision.kind is not Kind.PASSTHROUGH:
            self._later()
            return
        self.front.idle.release(self.fd, self.held)  # it spoke
        self.held.close = _nothing
        try:
            self.front._pass(conn, sandbox, source, dst, decision)
        except OSError as exc:  # as `_serve_one` does: mitmproxy will see the same
            log.debug("front: %s:%s: %s", self.peer[0], self.peer[1], exc)
            self.front._task(self.front._hand_off(conn, self.peer))
        except Exception:  # a bug here must not lose the connection's inspection: mitmproxy decides instead
            log.exception("front: %s:%s: handed to mitmproxy after an error", self.peer[0], self.peer[1])
            self.front._task(self.front._hand_off(conn, self.peer))

    def _waited(self) -> None:
        """`PEEK_WAIT` without a byte: `_serve_one` finds the wait over and serves it as a silent client."""
        self.timer = None
        self._later()

    def _later(self) -> None:
        self._stop()
        self.held.close = _nothing
        self.front._serve_later(self.conn, self.peer, self.known, (self.fd, self.held), self.started)

    def _dropped(self) -> None:
        """The idle bound closed it before it spoke: nothing was read from it."""
        self._stop()
        self.held.close = _nothing
        self.conn.close()


class _Undecided:
    """The first bytes look like TLS but are not a whole ClientHello yet."""


_UNDECIDED: Final = _Undecided()


class _PassedThrough:
    """`Front._known`: the connection was passed through."""


_PASSED: Final = _PassedThrough()
_Passed = _PassedThrough
_Known = tuple[Sandbox, tuple[str, int], tuple[str, int]]
"""A new connection's sandbox, source and destination."""


def _decided(data: bytes, gate: Gate, sandbox: Sandbox, meta: FlowMeta) -> Decision | _Undecided | None:
    """The gate's decision on a client's first bytes ``data`` (peeked): None when the client closed or they are
    not TLS (or a ClientHello bigger than the peek: mitmproxy judges it on all it reads), `_UNDECIDED` while a
    ClientHello is still arriving."""
    if not data or not tls.looks_like_tls(data):
        return None
    if len(data) >= HEAD_WAIT_LIMIT and not isinstance(tls.parse_client_hello(data), tls.ClientHello):
        return None
    decision = gate.on_first_bytes(sandbox, meta, data, b"", watching=True)
    return _UNDECIDED if decision.kind is Kind.WAIT else decision


async def _readable(conn: socket.socket, timeout: float) -> None:
    """Wait up to ``timeout`` seconds for ``conn`` to be readable (a reader callback and a timer: no
    ``wait_for``, whose timeout context and task cost more than the wait itself)."""
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    fd = conn.fileno()
    loop.add_reader(fd, wake)
    timer = loop.call_later(timeout, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)
        timer.cancel()
