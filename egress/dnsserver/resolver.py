"""The gateway's DNS resolver core: answers sandboxes only for allowlisted names, binds answered addresses to names.

For each query from a sandbox (sans sockets; `egress.dnsserver.listen` reads and writes them):

1. The query must be exactly one standard question (opcode 0, class IN) for a hostname (`dns.Question.hostname`:
   ``allowed.lab:secret.evil`` or ``[allowed.lab]`` is no hostname). Anything else is refused and recorded as
   ``dns-malformed``, never forwarded.
2. The sandbox's tunnel tracker (state per sandbox, not per address) and the name lists look at it; a base domain
   found tunnelling stays refused for ``dns.tunnel_hold`` seconds. `egress.decide.decide_dns` judges the hostname.
3. Allowed: the query forwarded is rebuilt from that hostname alone (`egress.dnsserver.forward`), so what the
   upstream sees is exactly what was judged. The answer is judged too (`egress.dnsserver.answers`: rebinding,
   pinned ``answers``, ``deny_ranges``, listed CNAMEs); its kept addresses are bound to the name for the sandbox
   (`Bindings`, which the proxy checks) and offered to the kernel's allow sets through ``on_answer``.

Upstream answers are cached for their TTL (`egress.dnsserver.cache`: policy-free, judged again on every hit), and
queries that would be forwarded as the same bytes while one is on its way upstream wait for that one exchange, so a
burst of one name costs one upstream query. Steps 1 and 2 run for every query, cached or not. A repeat of a plain
allowed UDP query answered moments ago is answered from prepared bytes (`egress.dnsserver.fast`), only while every
input of its decision and answer is unchanged; the tunnel tracker accounts it as a repeat (or the slow path runs).

Every decision (allowed or not) is reported as a `DecidedFlow`. A truncated UDP answer is retried over TCP. A
refusal tells an EDNS client why: an Extended DNS Error naming the reason and the rule (`forward.refusal`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from egress.decide import (
    Enforcement,
    Reason,
    Verdict,
    decide_dns,
    decide_dns_dropped,
    decide_dns_malformed,
    decide_unknown_source,
)
from egress.decisions import DecidedFlow, Reporter
from egress.detect import dns
from egress.detect.base import Category, Finding, evidence
from egress.detect.dns_tunnel import DnsTunnelLimits, DnsTunnelTracker, question_key
from egress.detect.names import NameLists
from egress.dnsserver import answers, fast, forward, replies
from egress.dnsserver.bindings import Bindings
from egress.dnsserver.cache import AnswerCache, Cached, aged
from egress.dnsserver.forward import Upstream
from egress.dnsserver.tcpbound import RULE as TCP_RULE
from egress.dnsserver.tcpbound import Conn
from egress.dnsserver.tcpserve import STALLED_RULE
from egress.flowlog import EndedFlow, FlowSink
from egress.policy.model import HostRule, Mode, Policy, Sandbox
from egress.record.naming import named

log = logging.getLogger(__name__)

UPSTREAM_TIMEOUT = 3.0
AnswerSink = Callable[[str, list[tuple[str, int]]], None]
"""Called with (sandbox name, [(address, ttl)]) for every allowed answer."""

__all__ = ["AnswerSink", "Pending", "Resolver", "Upstream", "serve", "tunnel_limits"]


@dataclass(frozen=True, slots=True)
class Pending:
    """An allowed query whose upstream answer is not in the cache: what `Resolver.finish` needs to answer it."""

    sandbox: Sandbox
    query: dns.Message
    name: str
    forwarded: bytes
    """The query to forward, its id zero (`egress.dnsserver.forward.upstream_query`)."""
    client: tuple[str, int]
    transport: str
    asked: Asked | None = None
    """What the flow log needs of the query (None: its sandbox keeps none)."""
    ready: Ready | None = None
    """How to prepare its answer for the fast path (None: it is not one to prepare)."""


@dataclass(frozen=True, slots=True)
class Ready:
    """A plain allowed query over UDP whose answer the fast path may keep (`egress.dnsserver.fast`)."""

    key: fast.FastKey
    question_end: int
    verdict: Verdict
    cache_key: bytes
    generation: int
    """The fast path's generation when it was decided: a reload before its upstream answer came voids it."""


@dataclass(frozen=True, slots=True)
class Asked:
    """An allowed query of a sandbox that keeps a flow log: its verdict, size and arrival (`egress.flowlog`)."""

    verdict: Verdict
    size: int
    at: float


def tunnel_limits(sandbox: Sandbox) -> DnsTunnelLimits:
    limits = sandbox.dns
    return DnsTunnelLimits(
        exfil_chars=limits.exfil_chars,
        encoded_subdomains=limits.encoded_subdomains,
        odd_subdomains=limits.odd_subdomains,
        rare_type_subdomains=limits.rare_type_subdomains,
        volume_subdomains=limits.volume_subdomains,
        hold=float(limits.tunnel_hold),
    )


class Resolver:
    """The sans-socket core: `answer` takes a query and its client and returns the bytes to send back."""

    def __init__(
        self,
        policy: Policy,
        upstream: Upstream,
        bindings: Bindings,
        reporter: Reporter,
        lists: NameLists,
        on_answer: AnswerSink | None = None,
        listen_address: str = "",
        listen_port: int = 53,
        clock: Callable[[], float] = time.monotonic,
        cache: AnswerCache | None = None,
        flows: FlowSink | None = None,
    ) -> None:
        """``flows``: told each answered query of a sandbox that keeps a flow log (`egress.flowlog`)."""
        self.flows = flows
        self.policy = policy
        self.upstream = upstream
        self.bindings = bindings
        self.reporter = reporter
        self.lists = lists
        self.on_answer = on_answer
        self.listen_address = listen_address
        self.listen_port = listen_port
        self.clock = clock
        self._trackers: dict[str, DnsTunnelTracker] = {}
        self.cache = cache if cache is not None else AnswerCache(clock=clock)
        self._in_flight: dict[bytes, asyncio.Future[Cached | None]] = {}
        self.fast = fast.FastPath()
        self.batch = fast.AllowedBatch(listen_address)
        """The fast path's allowed decisions until `flush_reports` (the socket's reader calls it 0.1 s after the
        first of them)."""
        self._told: dict[int, fast.Prepared] = {}
        """Prepared entries whose addresses were bound and offered to the allow sets since `flush_reports` (by id;
        the entry is kept here so its id is not reused before `flush_reports` empties this)."""
        self.answered = 0
        self.refused = 0
        self.kernel_drops = 0
        self.kernel_drops_by: dict[str, int] = {}
        """`kernel_drops` by the sandbox whose socket dropped them (``""``: the socket of other sources)."""
        self.reloaded: list[Callable[[Policy], None]] = []
        """Told each policy a reload swaps in (`egress.dnsserver.udpshare.UdpShare.steer`)."""
        self.tcp_bound_closed = 0
        """TCP connections closed by the bound (`egress.dnsserver.tcpbound`)."""
        self.tcp_stalled_closed = 0
        """TCP connections reset because their client took no answer (`egress.dnsserver.tcpserve`)."""

    def reload(self, policy: Policy) -> None:
        """Swap in a new policy. Tunnel state of sandboxes that remain is kept (a reload must not lift a hold);
        their new thresholds apply from now."""
        self.flush_reports()
        self.policy = policy
        self.fast.invalidate()
        for told in list(self.reloaded):
            told(policy)
        names = {sandbox.name: sandbox for sandbox in policy.sandboxes}
        for name in list(self._trackers):
            if name in names:
                self._trackers[name].limits = tunnel_limits(names[name])
            else:
                del self._trackers[name]

    def _tracker(self, sandbox: Sandbox) -> DnsTunnelTracker:
        tracker = self._trackers.get(sandbox.name)
        if tracker is None:
            tracker = self._trackers[sandbox.name] = DnsTunnelTracker(tunnel_limits(sandbox), self.clock)
        return tracker

    def _finding(self, sandbox: Sandbox, message: dns.Message, name: str) -> Finding | None:
        found = self._tracker(sandbox).observe_message(sandbox.name, message)
        if found is not None:
            return found
        hit = self.lists.match(name)
        if hit is not None and hit[2] != "doh":  # a DoH resolver's name: the proxy judges the connection
            list_name, category, protocol = hit
            return Finding(category, protocol, "dns-names", evidence(f"{name} on {list_name}"))
        if len(name) > sandbox.dns.max_name_length:
            shown = f"{len(name)}-character name {name}"  # only tunnels need names that long
            return Finding(Category.TUNNEL, "dns-tunnel", "dns-limits", evidence(shown))
        return None

    async def answer(self, query: bytes, client: tuple[str, int], transport: str) -> bytes | None:
        """The bytes to answer ``query`` with (None: nothing can be answered)."""
        result = self.answer_now(query, client, transport)
        self.flush_reports()  # no read of a socket to wait for the end of (TCP, tests)
        return await self.finish(result) if isinstance(result, Pending) else result

    def answer_now(self, query: bytes, client: tuple[str, int], transport: str) -> bytes | Pending | None:
        """`answer` without waiting: the bytes, or `Pending` when the upstream must be asked (then `finish` it).
        Everything but the upstream exchange happens here, so a query answered from the cache costs no task.
        A repeat of a plain allowed query answered moments ago is answered from its prepared bytes (`fast`)."""
        keyed = fast.key_of(query, client[0]) if transport == "udp" else None
        if keyed is not None:
            prepared = self.fast.entries.get(keyed[0])
            if prepared is not None:
                response = self._answer_prepared(prepared, query, keyed[1], client)
                if response is not None:
                    return response
                self.fast.forget(keyed[0])
        message = dns.parse_partial(query)
        if message is None:
            return None  # shorter than a header: there is no id to answer
        source = client[0].split("%", 1)[0]
        try:
            address = ipaddress.ip_address(source)
        except ValueError:
            return replies.empty(message, dns.REFUSED)
        shown = message.questions[0].name if message.questions else ""
        sandbox = self.policy.sandbox_for(address)
        if sandbox is None:
            refused = decide_unknown_source(source)
            record_id = self._report(client, transport, shown, refused, "")
            self.refused += 1
            return replies.refusal(message, refused, forward.EDE_PROHIBITED, record_id)
        problem = replies.problem_of(message)
        if problem:
            self._report(client, transport, shown, decide_dns_malformed(sandbox, shown, problem), sandbox.name)
            self.refused += 1
            return replies.empty(message, replies.rcode_of(problem))
        question = message.questions[0]
        name = question.hostname or ""
        # Queries refused during a hold are recorded under the held base domain, so they count into one record.
        held = self._tracker(sandbox).holding(sandbox.name, name)
        verdict = decide_dns(sandbox, name, self._finding(sandbox, message, name))
        record_id = self._report(client, transport, held or name, verdict, sandbox.name)
        if verdict.action is Enforcement.BLOCK:
            self.refused += 1
            if verdict.reason is not None and verdict.reason.value == "doh-canary":
                return replies.empty(message, dns.NXDOMAIN)  # the canary must look like a name that does not exist
            return replies.refusal(message, verdict, forward.EDE_BLOCKED, record_id)
        forwarded = forward.upstream_query(message, question, ident=0)
        asked = Asked(verdict, len(query), time.time()) if sandbox.flow_log and self.flows is not None else None
        plain = verdict.action is Enforcement.ALLOW and verdict.reason is None and verdict.finding is None
        ready = None
        if keyed is not None and plain and held is None:
            ready = Ready(keyed[0], keyed[1], verdict, AnswerCache.key(forwarded), self.fast.generation)
        cached = self.cache.get(forwarded)
        if cached is None:
            return Pending(sandbox, message, name, forwarded, client, transport, asked, ready)
        return self._respond(sandbox, message, name, client, transport, cached, asked, ready)

    async def finish(self, pending: Pending) -> bytes:
        """The answer to a `Pending` query, once the upstream has answered (SERVFAIL if it did not)."""
        cached = await self._upstream_answer(pending.forwarded)
        if cached is None:
            return replies.empty(pending.query, dns.SERVFAIL)
        p = pending
        return self._respond(p.sandbox, p.query, p.name, p.client, p.transport, cached, p.asked, p.ready)

    def _respond(
        self,
        sandbox: Sandbox,
        query: dns.Message,
        name: str,
        client: tuple[str, int],
        transport: str,
        cached: Cached,
        asked: Asked | None = None,
        ready: Ready | None = None,
    ) -> bytes:
        upstream = cached.message
        rule = sandbox.name_allowed(name)
        if rule is None:  # report mode let a refused name through: its answer is not judged against a rule
            sections: answers.Sections = (upstream.answers, upstream.authorities, upstream.additionals)
            ready = None
        else:
            judged = self._judged(cached, sandbox, name, rule)
            if judged.refused is not None:
                record_id = self._report(client, transport, name, judged.refused, sandbox.name)
                if judged.refused.action is Enforcement.BLOCK:
                    self.refused += 1
                    return replies.refusal(query, judged.refused, forward.EDE_BLOCKED, record_id)
            if judged.dropped:
                self._report(client, transport, name, answers.dropped_verdict(sandbox, judged.dropped), sandbox.name)
            if judged.refused is not None or judged.dropped:
                ready = None  # the fast path reports one decision per query: this took more
            sections = judged.sections if sandbox.mode is Mode.ENFORCE else sections_of(upstream)
        if cached.age:
            sections = (aged(sections[0], cached.age), aged(sections[1], cached.age), aged(sections[2], cached.age))
        found = [(a, record.ttl) for record in sections[0] if (a := dns.address_of(record)) is not None]
        if found:
            self.bindings.bind(sandbox.name, name, found)
            if self.on_answer is not None:
                self.on_answer(sandbox.name, found)
        self.answered += 1
        response = forward.client_response(query, upstream, sections, transport)
        if ready is not None:
            self._prepare(ready, sandbox, query, name, cached, response, found)
        if asked is not None and self.flows is not None:
            verdict = asked.verdict
            self.flows.flow_ended(EndedFlow(sandbox.name, client[0], client[1], self.listen_address, 53, transport,
                                            name, verdict.rule, verdict.action.value, asked.size, len(response),
                                            asked.at, time.time()))  # fmt: skip
        return response

    def _prepare(
        self,
        ready: Ready,
        sandbox: Sandbox,
        query: dns.Message,
        name: str,
        cached: Cached,
        response: bytes,
        found: list[tuple[str, int]],
    ) -> None:
        """Keep the answer just made for the fast path, and what it depended on."""
        question = query.questions[0]
        tracked = question_key(question.name, question.qtype)
        end = ready.question_end
        if ready.generation != self.fast.generation or not self.cache.reuse(ready.cache_key, cached):
            return  # a reload came while it waited, or the answer is not kept (nothing to answer it from later)
        prepared = fast.Prepared(ready.generation, sandbox, name, ready.verdict, tracked, ready.cache_key,
                                 cached, response[2:12], response[end:], found)  # fmt: skip
        self.fast.put(ready.key, prepared)

    def _answer_prepared(
        self, prepared: fast.Prepared, query: bytes, question_end: int, client: tuple[str, int]
    ) -> bytes | None:
        """The slow path's answer to ``query`` from what it prepared (`fast`); None when an input of the decision
        or of the answer changed since (the slow path answers then, and prepares it again)."""
        sandbox = prepared.sandbox
        tracker = self._trackers.get(sandbox.name)
        if prepared.generation != self.fast.generation or tracker is None:
            return None
        if not self.cache.reuse(prepared.cache_key, prepared.cached):
            return None
        if not tracker.repeat(sandbox.name, prepared.tracked):  # the tracker's account, as the slow path keeps it
            return None
        self.cache.touch(prepared.cache_key)
        wall = time.time()
        self.batch.add(wall, client[0], client[1], prepared)
        found = prepared.found
        if found and id(prepared) not in self._told:  # once per report (see `fast`): repeats would write nothing
            self._told[id(prepared)] = prepared
            self.bindings.bind(sandbox.name, prepared.name, found)
            if self.on_answer is not None:
                self.on_answer(sandbox.name, found)
        self.answered += 1
        self.fast.hits += 1
        response = query[:2] + prepared.head + query[12:question_end] + prepared.tail
        if sandbox.flow_log and self.flows is not None:
            verdict = prepared.verdict
            self.flows.flow_ended(EndedFlow(sandbox.name, client[0], client[1], self.listen_address, 53, "udp",
                                            prepared.name, verdict.rule, verdict.action.value, len(query),
                                            len(response), wall, time.time()))  # fmt: skip
        return response

    def flush_reports(self) -> None:
        """Report the fast path's allowed decisions merged so far (`fast.AllowedBatch`); the next fast answer of
        each entry binds and offers its addresses again."""
        if self._told:
            self._told.clear()
        if self.batch.pending:
            self.batch.flush(self.reporter)

    def kernel_dropped(self, count: int, sandbox: str = "") -> None:
        """The kernel dropped ``count`` queries at a listening socket (receive buffer full): ``sandbox``'s own socket
        (`egress.dnsserver.udpshare`; ``""``: the socket of sources in no sandbox). One decision with its count
        (the record counts them all): a decision per datagram cost the resolver CPU for each datagram a flood
        had the kernel drop."""
        self.kernel_drops += count
        self.kernel_drops_by[sandbox] = self.kernel_drops_by.get(sandbox, 0) + count
        log.warning("kernel dropped %d DNS datagrams of %s (its receive buffer full; %d in all)", count,
                    f"sandbox {sandbox}" if sandbox else "sources in no sandbox", self.kernel_drops)  # fmt: skip
        self._report(("0.0.0.0", 0), "udp", "", decide_dns_dropped(), sandbox, count)

    def sandbox_name(self, source: str) -> str:
        """The name of ``source``'s sandbox under the policy in force (``""``: in none)."""
        try:
            sandbox = self.policy.sandbox_for(ipaddress.ip_address(source))
        except ValueError:
            return ""
        return sandbox.name if sandbox is not None else ""

    def tcp_closed(self, conn: Conn, count: int) -> None:
        """A TCP connection closed by the resolver's bound (`egress.dnsserver.tcpbound`): a block, recorded (the
        recorder aggregates a flood's closes into one record with its count)."""
        self.tcp_bound_closed += 1
        text = f"TCP connection to the resolver closed: over its bound of connections ({count} of this sandbox)"
        verdict = Verdict(Enforcement.BLOCK, Reason.IDLE_LIMIT, TCP_RULE, evidence(text))
        self._report(conn.client, "tcp", "", verdict, conn.sandbox)

    def tcp_stalled(self, conn: Conn, answered: int, waited: float) -> None:
        """A TCP connection ended because its client did not take its answers (`egress.dnsserver.tcpserve`): a
        block, recorded like the bound's closes."""
        self.tcp_stalled_closed += 1
        text = (f"TCP connection to the resolver reset: its client took no answer for {waited:.0f} s "
                f"({answered} answered on it)")  # fmt: skip
        verdict = Verdict(Enforcement.BLOCK, Reason.IDLE_TIMEOUT, STALLED_RULE, evidence(text))
        self._report(conn.client, "tcp", "", verdict, conn.sandbox)

    def _report(
        self, client: tuple[str, int], transport: str, qname: str, verdict: Verdict, sandbox: str, count: int = 1
    ) -> str:
        """Report a decision; the id of its record (named now, for the refusal's EDE text), ``""`` when allowed."""
        attempt = DecidedFlow(
            ts=time.time(),
            sandbox=sandbox,
            src=client[0],
            sport=client[1],
            dst=self.listen_address,
            dport=53,
            transport=transport,
            host=qname,
            verdict=verdict,
            count=count,
        )
        attempt = named(attempt)
        self.reporter.report(attempt)
        return attempt.record_id

    def _judged(self, cached: Cached, sandbox: Sandbox, name: str, rule: HostRule) -> answers.Judged:
        """`answers.judge` of the cached message, once per sandbox and rule (the objects of the policy in force,
        which a reload replaces: a judgement made under the old policy is never reused)."""
        memo = cached.judged.get((id(sandbox), id(rule)))
        if isinstance(memo, tuple) and memo[0] is sandbox and memo[1] is rule and memo[2] is self.lists:
            judged: answers.Judged = memo[3]
            return judged
        judged = answers.judge(sandbox, name, rule, cached.message, self.lists)
        cached.judged[(id(sandbox), id(rule))] = (sandbox, rule, self.lists, judged)
        return judged

    async def _upstream_answer(self, forwarded: bytes) -> Cached | None:
        """The upstream's answer to ``forwarded`` (its id zero): from the exchange already on its way for the same
        bytes, from the cache if one just ended, or from a new one (None: the upstream failed or answered something
        else)."""
        cached = self.cache.get(forwarded, counted=False)
        if cached is not None:
            return cached
        key = AnswerCache.key(forwarded)
        pending = self._in_flight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._exchange(forwarded))
            self._in_flight[key] = pending
            pending.add_done_callback(lambda _: self._in_flight.pop(key, None))
        return await asyncio.shield(pending)  # one waiter cancelled must not cancel the others' exchange

    async def _exchange(self, forwarded: bytes) -> Cached | None:
        sent = secrets.randbits(16).to_bytes(2, "big") + forwarded[2:]
        raw = await self._forward(sent)
        upstream = dns.parse_partial(raw) if raw is not None else None
        if upstream is None or upstream.problem or not forward.matches(sent, upstream):
            return None
        return self.cache.put(forwarded, upstream)

    async def _forward(self, query: bytes) -> bytes | None:
        try:
            response = await asyncio.wait_for(forward.udp_query(self.upstream, query), UPSTREAM_TIMEOUT)
            head = dns.parse_partial(response) if response is not None else None
            if head is not None and head.tc:
                response = await asyncio.wait_for(forward.tcp_query(self.upstream, query), UPSTREAM_TIMEOUT)
        except (TimeoutError, OSError) as exc:
            log.warning("upstream %s:%d failed: %s", self.upstream.host, self.upstream.port, exc)
            return None
        return response


def sections_of(message: dns.Message) -> answers.Sections:
    return (message.answers, message.authorities, message.additionals)


async def serve(resolver: Resolver, hosts: list[str], port: int) -> list[object]:
    """`egress.dnsserver.listen.serve`, named here too for the supervisor (imported late: listen imports this)."""
    from egress.dnsserver import listen

    return await listen.serve(resolver, hosts, port)
