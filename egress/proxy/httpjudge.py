"""What the plain-HTTP fast path (`egress.proxy.httpfast`) decides about the requests and responses of one
connection: sockets-free, and the same judgements the addon makes (`egress.proxy.mitm.flows`).

A request is plainly allowed when the gate allows it with nothing to record (the first by
`Gate.on_first_bytes`, every later one by the Host check of `Gate.on_request`) and the stream detectors find
nothing in it, its body and its pieces (`egress.proxy.mitm.inspect.inspect_exchange`); a response is judged with
its request the same way. Clean judgements are kept for the connection by the exact bytes judged (`MEMO`): the
detectors are pure functions of the flow's addresses and bytes, so the same bytes on the same connection get the
same answer. What the bodies before it on the connection make of a body is not the memo's (`BodyStreams`: every
body joins its direction's stream, memo or not). The Host's binding is looked up on every request (it expires);
the policy's answer to it is kept, being a pure function of the sandbox, the destination, the Host and the
binding.
"""

from __future__ import annotations

from typing import Final

from egress.decide import Enforcement, Reason, Verdict, decide_http
from egress.detect.base import Category, Finding, FlowMeta, evidence
from egress.policy.model import Sandbox
from egress.proxy import authority, httpwire
from egress.proxy.gate import Gate, Kind
from egress.proxy.mitm.inspect import BodyStreams, Message, Read, inspect_exchange, read, unidentified

MEMO: Final = 8
"""Clean judgements kept per connection (requests; requests with their responses), each at most `MEMO_BYTES`."""
MEMO_BYTES: Final = 16 * 1024
FAIL_CLOSED: Final = "fail-closed"
"""The rule of a block made because inspection failed (the addon's too: `egress.proxy.mitm.layers`)."""


class Judge:
    """The judgements of one connection's requests and responses, with what it keeps of them."""

    def __init__(self, gate: Gate, sandbox: Sandbox, meta: FlowMeta) -> None:
        self.gate = gate
        self.sandbox = sandbox
        self.meta = meta
        self.requests: dict[bytes, tuple[httpwire.Request, Read]] = {}
        """Requests judged clean on this connection, by their bytes."""
        self.exchanges: dict[tuple[bytes, bytes], tuple[httpwire.Response, Read]] = {}
        """Responses judged clean with their request on this connection, by both's bytes (with the response as
        read, whose body and fields still join the connection's responses when the memo answers: `rejoined`)."""
        self.bodies = BodyStreams(meta, gate.stream)
        """The connection's request bodies and response bodies, each direction joined (red team: Stratum cut
        across keep-alive bodies). Fed every body, whether the memo judged its exchange or not."""
        self.hosts: dict[tuple[str, bool], Verdict] = {}
        """`decide_http` for this connection's sandbox and destination, by Host and whether it is bound."""

    def known(self, data: bytes) -> tuple[httpwire.Request, Read] | None:
        """``data`` is exactly one request judged clean before (a keep-alive client polling one URL)."""
        return self.requests.get(data)

    def request(self, request: httpwire.Request, raw: bytes, asked: Read, first: bool) -> Verdict | None:
        """The allow verdict of a plainly allowed request (``first``: the connection's first); None when
        mitmproxy must decide it. An exception is an inspection error (the caller blocks, or hands it off)."""
        if authority.port_differs(request.port, self.meta.dport):
            return None  # a Host naming another port than the connection's: mitmproxy refuses it and records
        if first:
            decision = self.gate.on_first_bytes(self.sandbox, self.meta, raw, b"")
            if decision.kind is not Kind.HTTP or decision.verdict is not None or decision.allow is None:
                return None
            verdict = decision.allow
        else:
            verdict = self.host(request.host)
        if verdict.action is not Enforcement.ALLOW or verdict.recorded:
            return None
        if raw not in self.requests:
            if asked.problem is not None or inspect_exchange(self.meta, self.gate.stream, asked) is not None:
                return None  # a body that cannot be read, or a finding to judge and record: mitmproxy's
            if len(raw) <= MEMO_BYTES:
                keep_at_most(self.requests, MEMO)[raw] = (request, asked)
        return verdict

    def host(self, host: str) -> Verdict:
        """`Gate.on_request` for a later request on this connection (see the module docstring)."""
        bound = bool(host) and host in self.gate.names_for(self.sandbox.name, self.meta.dst)
        verdict = self.hosts.get((host, bound))
        if verdict is None:
            verdict = decide_http(self.sandbox, self.meta.dst, self.meta.dport, host or None, bound)
            keep_at_most(self.hosts, MEMO)[(host, bound)] = verdict
        return verdict

    def judged(self, raw: bytes, data: bytes) -> httpwire.Response | None:
        """The framing of ``data``, when it is a response judged clean before with the request ``raw``."""
        known = self.exchanges.get((raw, data))
        return known[0] if known is not None else None

    def response(self, raw: bytes, asked: Read, data: bytes, response: httpwire.Response) -> Finding | None:
        """What the detectors find in a response with its request (an unreadable body is unidentified), then in
        its body joined to the connection's response bodies before it."""
        answer = read(Message(status(response), response.fields, response.body, response.trailers))
        finding = inspect_exchange(self.meta, self.gate.stream, asked, answer)
        if finding is None and answer.problem is not None:
            finding = unidentified(f"response body: {answer.problem.why}")
        if finding is None:
            finding = self.bodies.message(answer, False)
        if finding is None and len(raw) + len(data) <= MEMO_BYTES:
            keep_at_most(self.exchanges, MEMO)[(raw, data)] = (response, answer)
        return finding

    def joined(self, asked: Read, from_client: bool) -> Finding | None:
        """A request's decoded body and its fields, joined to the connection's requests before it
        (`BodyStreams.message`)."""
        return self.bodies.message(asked, from_client)

    def rejoined(self, raw: bytes, data: bytes) -> Finding | None:
        """A response the memo judged clean with its request (`judged`): its body joined to the connection's
        response bodies before it, which the memo does not know."""
        known = self.exchanges.get((raw, data))
        return self.bodies.message(known[1], False) if known is not None else None


def keep_at_most[K, V](memo: dict[K, V], size: int) -> dict[K, V]:
    """``memo`` with room for one more entry (its oldest dropped)."""
    if len(memo) >= size:
        del memo[next(iter(memo))]
    return memo


def message(request: httpwire.Request) -> Message:
    return Message(f"{request.method} {request.target} HTTP/1.1", request.fields, request.body, (), query(request))


def query(request: httpwire.Request) -> bytes:
    return request.target.partition("?")[2].encode("latin-1", "replace")


def status(response: httpwire.Response) -> str:
    return f"HTTP/1.1 {response.status} {response.reason}"


def fail_closed(why: str) -> Verdict:
    """A block for what the fast path could not finish judging (the addon's ``fail_closed_verdict``)."""
    finding = Finding(Category.TUNNEL, "inspection-error", "proxy", evidence(why))
    return Verdict(Enforcement.BLOCK, Reason.TUNNEL, FAIL_CLOSED, evidence(f"inspection-error: {why}"), finding)
