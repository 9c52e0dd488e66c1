"""The front's plain-HTTP fast path: keep-alive HTTP/1.1 to allowed hosts judged and relayed without mitmproxy.

`PlainHttp.serve` takes a connection whose first bytes are an HTTP request and serves it request by request.
Each request is peeked (``MSG_PEEK``: nothing consumed) whole, head and body, and judged exactly as the addon
judges it (`egress.proxy.mitm.addon`, `egress.proxy.mitm.flows`): the first by `Gate.on_first_bytes` (Host bound
to the address, the name detector, the detectors over the bytes), every later one by `Gate.on_request` (the
Host re-checked against the address), then its body and pieces through the same stream detectors
(`egress.proxy.mitm.inspect.inspect_exchange`). Only a request that is in `egress.proxy.httpwire`'s subset and
plainly allowed (nothing to record, no finding) is consumed and forwarded; at the first one that is not, the
connection goes to mitmproxy with that request unread, and mitmproxy decides it (a 403, a record, an upgrade, a
coded body) as it always did. Each request body (whatever it is judged alone) also joins the connection's request
bodies before it (`Judge.joined`): a finding there is decided here, recorded or blocked (a 403, the connection
closed), never handed off (mitmproxy would see the body alone). Responses are read whole, judged with their
request (`inspect_exchange`) and joined to the connection's response bodies before them, and only then written to
the client; one that finds something is recorded, and a blocking one is answered with egress's 403 and the
connection closed. Anything the relay cannot frame or judge after a request went out closes both
sides (a 502 for a response it could not frame): an error never forwards unjudged bytes.

A connection waiting for its next request is held at most the worker's idle timeout (``idle_timeout``, the value
mitmproxy's `egress.proxy.mitm.quiet` gets): one sweep every tenth of it (at most every 5 s, no timer per request)
closes those silent that long since their last answer, recorded ``idle-timeout`` as the addon's ``idle_closed``
records mitmproxy's (red team 7). The same sweep closes, recorded the same way, a connection whose server made no
progress on the request under way for the idle timeout: took no byte of it, sent none of its answer
(`Upstream.since`; mitmproxy's watch ends such a connection too). A request head or body once begun is waited for
at most `REQUEST_WAIT`, then mitmproxy takes the connection, and its idle timeout with it.

A cut (a policy that no longer allows the connection, the lockdown: `egress.proxy.openflows`; the idle timeout)
aborts both sides: ``SO_LINGER`` zero, so the closes are resets and what the send buffers hold (a request body the
server has not read yet, an answer the client has not) is dropped, not sent after the cut; nothing is dialled or
sent after it. A block aborts the server's side (the client's gets its 403, then a graceful end); the server's
side has the linger from its connect, so a worker that dies resets it too (`egress.proxy.httpupstream`). Only the
ends of an exchange that went as it should (the response forwarded, the client closed, a handoff) are graceful.

The judgements are `egress.proxy.httpjudge`'s (which keeps the clean ones of a connection by their exact bytes:
a keep-alive client polling one URL costs one inspection); the server side (dialling, keeping the connection,
reading whole responses) is `egress.proxy.httpupstream`'s; the sockets' waiting is `egress.proxy.httpio`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from functools import partial
from typing import Final

from egress.decide import Enforcement, Verdict, decide_finding, decide_idle_timeout
from egress.decisions import DecidedFlow, Reporter
from egress.detect import http, upgrade
from egress.detect.base import Finding, FlowMeta
from egress.flowlog import EndedFlow, FlowSink
from egress.policy.model import Sandbox
from egress.proxy import httpwire
from egress.proxy.gate import Gate, flow_meta
from egress.proxy.httpio import Waker, close_gently, send_all
from egress.proxy.httpjudge import Judge, fail_closed, message
from egress.proxy.httpupstream import Closed, Stale, Upstream
from egress.proxy.idle import IDLE_TIMEOUT
from egress.proxy.mitm.inspect import Read, read
from egress.proxy.openflows import OpenFlows
from egress.proxy.splice import _ABORT, _linger
from egress.record.naming import named
from egress.replay import Kind as Asked
from egress.replay import Question

log = logging.getLogger("egress.proxy")

PEEK: Final = httpwire.HEAD_MAX + httpwire.BODY_MAX
REQUEST_WAIT: Final = 5.0
"""Seconds a request head, once begun, may take to arrive whole with its body before mitmproxy takes it."""
SWEEP_MAX: Final = 5.0
"""Seconds between two sweeps for connections past the idle timeout at most (else a tenth of the timeout)."""
WAITING_NOTE: Final = "no request since its last answer (the front's plain-HTTP fast path)"
STALLED_NOTE: Final = "the server neither took more of its request nor answered (the front's plain-HTTP fast path)"


class PlainHttp:
    """The fast path of one worker (see the module docstring)."""

    def __init__(
        self,
        gate: Gate,
        reporter: Reporter,
        open_flows: OpenFlows | None = None,
        flows: FlowSink | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``idle_timeout``: seconds a connection may wait for its next request (the worker's, as mitmproxy's);
        ``clock``: when each began waiting (monotonic; the tests' own)."""
        if idle_timeout <= 0:
            raise ValueError(f"the idle timeout must be positive (got {idle_timeout})")
        self.gate = gate
        self.reporter = reporter
        self.open_flows = open_flows
        self.flows = flows
        """Told what each connection served here carried, for the sandboxes that keep a flow log."""
        self.requests = 0
        """Requests relayed by the fast path."""
        self.handed_off = 0
        """Connections given to mitmproxy at a request boundary (their first request, or a later one)."""
        self.blocked = 0
        """Responses answered with a 403 here."""
        self.idle_timeout = idle_timeout
        self.clock = clock
        self.idle_closed = 0
        """Connections closed by the idle timeout: waiting for their next request, or for their server."""
        self._serving: set[_Exchange] = set()
        self._sweeping: asyncio.TimerHandle | None = None

    async def serve(self, conn: socket.socket, peer: tuple[str, int], dst: tuple[str, int]) -> bool:
        """Serve ``conn`` (going to ``dst``) request by request when its first bytes, there now, are an HTTP
        request from a sandbox to a destination it may reach; True once it is finished here, False when mitmproxy
        must take it: then the request it stopped at is unread and the upstream side is closed."""
        sandbox = self.gate.sandbox(str(peer[0]))
        if sandbox is None:
            return False
        connect = self.gate.on_connect(sandbox, *dst)
        if connect.action is not Enforcement.ALLOW or connect.recorded:
            return False  # a would-block recorded at connect time: the addon's
        try:
            first = conn.recv(httpwire.HEAD_MAX, socket.MSG_PEEK)
        except BlockingIOError:
            return False  # a silent client (a server-first protocol)
        if not http.looks_like_http_request(first):
            return False
        source = (str(peer[0]), int(peer[1]))
        exchange = _Exchange(self, conn, flow_meta(source, dst), sandbox)
        done = False
        self._serving.add(exchange)
        if self._sweeping is None:
            self._sweeping = asyncio.get_running_loop().call_later(min(self.idle_timeout / 10, SWEEP_MAX), self._swept)
        try:
            done = await exchange.run()
        finally:
            self._serving.discard(exchange)
            exchange.finish(done)
        if not done:
            self.handed_off += 1
        return done

    def sweep(self) -> int:
        """Close the connections that have waited for their next request, or for their server to make progress,
        for the idle timeout or longer, each recorded ``idle-timeout``; how many."""
        now, closed = self.clock(), 0
        for exchange in list(self._serving):
            if exchange.waiting is not None and now - exchange.waiting >= self.idle_timeout:
                closed += exchange.expire(now)
            elif (since := exchange.upstream.since) is not None and now - since >= self.idle_timeout:
                closed += exchange.stalled(now, since)
        self.idle_closed += closed
        return closed

    def _swept(self) -> None:
        self._sweeping = None
        try:
            self.sweep()
        except Exception:  # one connection's close must not end the sweeps
            log.exception("httpfast: closing an idle connection failed")
        if self._serving:
            self._sweeping = asyncio.get_running_loop().call_later(min(self.idle_timeout / 10, SWEEP_MAX), self._swept)


class _Exchange:
    """One client connection in the fast path."""

    def __init__(self, owner: PlainHttp, conn: socket.socket, meta: FlowMeta, sandbox: Sandbox) -> None:
        self.owner = owner
        self.gate = owner.gate
        self.conn = conn
        self.meta = meta
        self.sandbox = sandbox
        self.upstream = Upstream((meta.dst, meta.dport), owner.clock)
        self.client_ready = Waker(asyncio.get_running_loop(), conn)
        self.consumed = False
        """A request was read from the client: from then on the connection is never handed off."""
        self.judge = Judge(owner.gate, sandbox, meta)
        self.token = 0
        self.started = time.time()
        self.up = self.down = 0
        """Bytes of requests read from the client and of answers written to it, here (the flow log's)."""
        self.passed: Verdict | None = None
        self.passed_host = ""
        self.waiting: float | None = None
        """Since when (the owner's clock) it waits for the client's next request; None while it is served."""
        self.cut = False
        """Cut (`_sever`): both sides end with a reset."""

    async def run(self) -> bool:
        """True once the connection is finished here; False when mitmproxy must take it (nothing of the request
        it stopped at was read)."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                request = await self._next_request(loop)
                if request is None:
                    return False  # outside the subset, or not plainly allowed: mitmproxy decides it
                parsed, raw, asked = request
                joined = self._joined(partial(self.judge.joined, asked, True))
                if joined is not None and joined.action is Enforcement.BLOCK:
                    self.conn.recv(len(raw))  # read, so that the close after the 403 is not a reset that loses it
                    self._blocks(joined, parsed.host)
                    return True
                if joined is not None:
                    self._report(joined, parsed.host)  # recorded (a detector set to record, report mode)
                reused = await self.upstream.dial(loop)
                self.conn.recv(len(raw))  # exactly the judged bytes (peeked, so all there)
                self.consumed = True
                self.up += len(raw)
                self._keep(parsed.host)
                self.owner.requests += 1
                try:
                    keep = await self._forward(loop, parsed, raw, asked)
                except Stale:
                    if not reused:
                        raise Closed("the server closed without answering") from None
                    await self.upstream.dial(loop, again=True)  # it had closed the idle connection meanwhile: once more
                    keep = await self._forward(loop, parsed, raw, asked)
                if not keep or parsed.close:
                    return True
                self.waiting = self.owner.clock()  # swept from now on (`PlainHttp.sweep`): the idle timeout
                await self.client_ready.wait()  # the next request (an answer comes before it, mostly)
        except Closed as exc:
            log.debug("httpfast: %s:%s: %s", self.meta.src, self.meta.sport, exc)
            return True
        except OSError as exc:  # before a request was read (a failed dial): mitmproxy answers it as it would
            log.debug("httpfast: %s:%s: %s", self.meta.src, self.meta.sport, exc)
            return self.consumed
        except Exception:  # a bug must neither lose a judgement nor forward unjudged bytes
            log.exception("httpfast: %s:%s: failed; connection closed", self.meta.src, self.meta.sport)
            if not self.consumed:
                return False  # nothing read: mitmproxy judges the request
            self._blocks(fail_closed("plain-HTTP fast path failed"), "")
            return True

    def finish(self, done: bool) -> None:
        """Release the upstream side; close the client's unless it goes to mitmproxy (``done`` false): with a
        reset when cut, else gently."""
        self.client_ready.close()  # before mitmproxy registers its own reader on the socket
        self.upstream.close()
        if self.cut:
            self.conn.close()  # its linger is zero (`_sever`): a reset, what its send buffer holds dropped
        elif done:
            close_gently(self.conn)
        if self.token and self.owner.open_flows is not None:
            self.owner.open_flows.discard(self.token)
        self._log_flow()

    def _log_flow(self) -> None:
        """What the requests served here carried, for the flow log (a connection that goes on in mitmproxy after
        them is logged there too, for what it carries there)."""
        sink, passed, meta = self.owner.flows, self.passed, self.meta
        if sink is None or passed is None or not self.consumed or not self.sandbox.flow_log:
            return
        sink.flow_ended(EndedFlow(self.sandbox.name, meta.src, meta.sport, meta.dst, meta.dport, "tcp",
                                  self.passed_host, passed.rule, passed.action.value, self.up, self.down,
                                  self.started, time.time()))  # fmt: skip

    def _keep(self, host: str) -> None:
        flows = self.owner.open_flows
        if flows is None or self.token:
            return
        question = Question(Asked.HTTP, self.meta.src, self.meta.dst, self.meta.dport, host or None)
        self.token = flows.add(question, self._sever)

    def expire(self, now: float) -> bool:
        """Waiting since ``self.waiting`` with nothing sent: record the idle timeout's close (as the addon's
        ``idle_closed`` does) and close both sides (the task then ends it: its peek sees the end). False, nothing
        done, when the client's next bytes (or its close) are there already: the task reads them next."""
        try:
            there = self.conn.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            there = None
        except OSError:
            there = b""
        if there is not None or self.waiting is None:
            return False
        quiet_s, self.waiting = now - self.waiting, None
        try:
            self._report(decide_idle_timeout(quiet_s, WAITING_NOTE), self.passed_host)
        finally:
            self._sever()  # closed even when the record failed
        return True

    def stalled(self, now: float, since: float) -> bool:
        """Its server made no progress on the request under way since ``since``: record the idle timeout's close
        and cut both sides. False, nothing done, when the server's next bytes (or its end) are there already and
        the task reads them next (not while it sends: bytes the server sent unread then are no progress)."""
        sock = self.upstream.sock
        try:
            there = None if sock is None or self.upstream.writing is not None else sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            there = None
        except OSError:
            there = b""
        if there is not None:
            return False
        try:
            self._report(decide_idle_timeout(now - since, STALLED_NOTE), self.passed_host)
        finally:
            self._sever()
        return True

    def _sever(self) -> None:
        """Cut both sides (`OpenFlows`' close, the idle timeout): the client's linger zero and its side shut (its
        end, then the reset), the server's aborted (`Upstream.abort`: a reset, no end before it); the task, woken
        wherever it waits, closes both as it ends (`finish`), at once."""
        self.cut = True
        _linger(self.conn, _ABORT)
        with contextlib.suppress(OSError):
            self.conn.shutdown(socket.SHUT_RDWR)
        self.upstream.abort()

    def _report(self, verdict: Verdict, host: str) -> str:
        meta = self.meta
        decided = DecidedFlow(
            time.time(), self.sandbox.name, meta.src, meta.sport, meta.dst, meta.dport, "tcp", host, verdict
        )
        decided = named(decided)
        self.owner.reporter.report(decided)
        return decided.record_id

    async def _peek(self, loop: asyncio.AbstractEventLoop, size: int, deadline: float | None) -> bytes:
        """Up to ``size`` bytes the client sent that are not consumed; waits for at least one, or ``deadline``
        (then ``b""``)."""
        while True:
            try:
                data = self.conn.recv(size, socket.MSG_PEEK)
            except BlockingIOError:
                data = None
            if data == b"":
                raise Closed("client closed")
            if data is not None:
                return data
            timeout = None if deadline is None else deadline - loop.time()
            if timeout is not None and timeout <= 0:
                return b""
            await self.client_ready.wait(timeout)

    async def _next_request(self, loop: asyncio.AbstractEventLoop) -> tuple[httpwire.Request, bytes, Read] | None:
        """The next request, judged and plainly allowed, with its bytes and how it was read; None for mitmproxy."""
        data = await self._peek(loop, httpwire.HEAD_MAX, None)
        self.waiting = None  # it spoke: no longer idle
        known = self.judge.known(data)
        if known is not None:
            return (known[0], data, known[1]) if self._allowed(known[0], data, known[1]) else None
        deadline = loop.time() + REQUEST_WAIT
        while True:
            parsed = httpwire.parse_request(data)
            if parsed is not httpwire.MORE:
                break
            more = await self._peek_grown(loop, len(data), deadline)
            if more is None:
                return None
            data = more
        if not isinstance(parsed, httpwire.Request):
            return None
        raw = data[: parsed.size]
        try:
            asked = read(message(parsed))
            if not self._allowed(parsed, raw, asked):
                return None
        except Exception as exc:  # an inspection error blocks (the addon's request hook: a 403 and a record)
            log.exception("httpfast: judging a request failed")
            if not self.consumed:
                return None  # the connection's first request: mitmproxy judges it as it did before the fast path
            self.conn.recv(len(raw))  # read, so that the close after the 403 is not a reset that loses it
            self._blocks(fail_closed(f"request: {exc!r}"), parsed.host)
            raise Closed("inspection failed") from exc
        return parsed, raw, asked

    async def _peek_grown(self, loop: asyncio.AbstractEventLoop, size: int, deadline: float) -> bytes | None:
        """The peeked bytes once more than ``size`` of them are there; None when ``deadline`` passes first."""
        while True:
            await asyncio.sleep(0.001)  # the socket stays readable while the bytes wait unread: no busy loop
            data = await self._peek(loop, PEEK, deadline)
            if not data:
                return None
            if len(data) > size:
                return data
            if loop.time() >= deadline:
                return None

    def _allowed(self, request: httpwire.Request, raw: bytes, asked: Read) -> bool:
        """Whether the request is plainly allowed (its allow verdict then reported); else mitmproxy decides it."""
        verdict = self.judge.request(request, raw, asked, first=not self.consumed)
        if verdict is None:
            return False
        self._report(verdict, request.host)
        if self.passed is None:
            self.passed, self.passed_host = verdict, request.host
        return True

    async def _forward(
        self, loop: asyncio.AbstractEventLoop, request: httpwire.Request, raw: bytes, asked: Read
    ) -> bool:
        """Send the judged request upstream and answer it (`_answer`); `Stale` when the server had closed."""
        await self.upstream.send(loop, raw)
        return await self._answer(loop, request, raw, asked)

    async def _answer(
        self, loop: asyncio.AbstractEventLoop, request: httpwire.Request, raw: bytes, asked: Read
    ) -> bool:
        """Read the whole response, judge it with its request, and write it (or egress's 403) to the client; True
        when the connection may carry another request."""
        data, response, judged = await self.upstream.response(request.method, lambda data: self.judge.judged(raw, data))
        if response is None:
            self._unframed(data, request.host)
            return False
        if not judged:
            try:
                finding = self.judge.response(raw, asked, data, response)
            except Exception as exc:  # an inspection error blocks, as the addon's response hook does
                log.exception("httpfast: judging a response failed; blocked")
                return not self._blocks(fail_closed(f"response: {exc!r}"), request.host)
            if finding is not None and self._blocks(decide_finding(self.sandbox, finding), request.host):
                return False
        else:
            joined = self._joined(lambda: self.judge.rejoined(raw, data))
            if joined is not None and self._blocks(joined, request.host):
                return False
        await send_all(loop, self.conn, data)
        self.down += len(data)
        return not response.close

    def _joined(self, judge: Callable[[], Finding | None]) -> Verdict | None:
        """The verdict on what a body joined to its direction's bodies before it shows (`Judge.joined`,
        `Judge.rejoined`); an inspection error blocks."""
        try:
            finding = judge()
        except Exception as exc:
            log.exception("httpfast: judging joined bodies failed; blocked")
            return fail_closed(f"joined bodies: {exc!r}")
        return None if finding is None else decide_finding(self.sandbox, finding)

    def _blocks(self, verdict: Verdict, host: str) -> bool:
        """Report ``verdict``; when it blocks, the client gets egress's 403 (sent here) and the connection ends."""
        record_id = self._report(verdict, host)
        if verdict.action is not Enforcement.BLOCK:
            return False
        self.upstream.abort()  # nothing more goes to the server, and its side ends with a reset
        self.owner.blocked += 1
        reason = verdict.reason.value if verdict.reason is not None else "blocked"
        answer = httpwire.blocked_answer(f"egress blocked this request: {reason} ({verdict.rule})", record_id)
        with contextlib.suppress(OSError):
            self.conn.send(answer)
        return True

    def _unframed(self, data: bytes, host: str) -> None:
        """A response the relay cannot frame: nothing of it is forwarded. A ``101`` nobody asked for is recorded as
        the addon records it (`egress.detect.upgrade.switched`); anything else gets a 502 and is recorded as an
        inspection error (`fail_closed`). The server's side ends with a reset."""
        self.upstream.abort()
        if data.startswith((b"HTTP/1.1 101", b"HTTP/1.0 101")):
            head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
            offered = next((line.split(":", 1)[1].strip() for line in head if line.lower().startswith("upgrade:")), "")
            self._report(decide_finding(self.sandbox, upgrade.switched(offered)), host)
            return
        # Refused, so recorded as every block is: the server's bytes could not be judged (red team 8 hid a pool's
        # job in a chunk extension), and the record ties the attempt to the sandbox that asked.
        first = data.split(b"\r\n", 1)[0][:80]
        self._report(fail_closed(f"a response the fast path cannot frame: {first!r}"), host)
        self.owner.blocked += 1
        with contextlib.suppress(OSError):
            self.conn.send(httpwire.BAD_GATEWAY)
