"""The proxy's first decision on a connection, from its addresses and first bytes: sans-IO and mitmproxy-free.

`Gate.on_connect` runs before the gateway dials out (an address no rule could allow is never contacted);
`Gate.on_first_bytes` runs when the first bytes arrive and says what the proxy does with the connection:

- ``PASSTHROUGH``: allowed TLS, relayed without decryption (the fast path);
- ``INTERCEPT``: allowed TLS to a host on the sandbox's decrypt list, opened with the gateway's CA;
- ``HTTP``: plain HTTP, handled request by request (Host checked on each, bodies inspected);
- ``INSPECT``: other TCP to an allowed destination, relayed through the detectors;
- ``REFUSE``: closed at once, both sides; the verdict says why;
- ``WAIT``: not enough bytes yet (a ClientHello or request head still arriving, or an opening too short to judge).

A destination a network rule covers gets what the rule expects (`egress.policy.model.Expect`), and so does a raw
stream (no SNI, no Host) to a host rule's port of a name bound to the address (`Gate.expecting`; red team 6): a
stream that opens fully encrypted (`egress.detect.encrypted`) is a tunnel unless the rule says ``any``; SSH passes
only where it says ``ssh``; a network rule's TLS passed through it is marked ``watch`` (the front relays it through
`egress.detect.tlsshape`, which finds TLS carrying TLS or a shell); a caller that cannot watch gets a refusal.
A host rule's TLS is watched for the mining shape where ``detectors.mining_shape`` is not ``allow``: a caller
that cannot watch (mitmproxy, given what the front could not judge) gets a refusal there too (issue 9).
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Final, Protocol

from egress.decide import (
    Enforcement,
    Verdict,
    decide_authority_port,
    decide_finding,
    decide_fronting,
    decide_http,
    decide_raw,
    decide_tls,
    decide_unknown_source,
    network_rule_for,
)
from egress.detect import encrypted, http, ssh, tls
from egress.detect.base import MORE, Category, Detector, Finding, FlowMeta, FlowView, Result, Transport, _More, evidence
from egress.detect.engine import FlowInspector
from egress.detect.registry import MINING, OPAQUE, OPAQUE_UPGRADING
from egress.policy.model import DetectorAction, Expect, HostRule, NetworkRule, Policy, Sandbox
from egress.proxy import authority, unfinished
from egress.thishost import Address, refusal

NOT_EXPECTED = "protocol-not-expected"
"""The protocol of a stream refused at its opening for being none of what its network rule expects."""
HEAD_WAIT_LIMIT = 16 * 1024
"""Bytes we wait for a whole ClientHello or request head before judging what we have."""
SANDBOXES_KEPT = 4096
"""Source addresses whose sandbox a gate keeps (all forgotten at once past this: spoofed sources cannot grow it)."""
VERDICTS_KEPT = 4096
"""Address verdicts a gate keeps (`Gate._verdicts`; all forgotten at once past this: a sandbox that dials many
addresses cannot grow it)."""


class Kind(enum.Enum):
    PASSTHROUGH = "passthrough"
    INTERCEPT = "intercept"
    HTTP = "http"
    INSPECT = "inspect"
    REFUSE = "refuse"
    WAIT = "wait"


@dataclass(frozen=True, slots=True)
class Decision:
    kind: Kind
    verdict: Verdict | None = None
    """Set whenever something is worth recording (a block or a would-block)."""
    host: str = ""
    """The name the client gave (SNI or Host), if any."""
    allow: Verdict | None = None
    """The verdict that let the connection through, when nothing is worth recording (its decision log line)."""
    watch: bool = False
    """PASSTHROUGH only: TLS through a network rule, which only a caller that watches it may relay (the front
    relays every passthrough through `egress.detect.tlsshape`; here it also records the suspected shapes)."""


ThisHost = Callable[[str, Collection[Address]], Verdict | None]
"""(destination, the gateway's own addresses) → the refusal of dialling it, or None (`egress.thishost.refusal`)."""
NamesFor = Callable[[str, str], frozenset[str]]
"""(sandbox name, destination address) → names the gateway resolver answered with that address."""


@functools.lru_cache(maxsize=4096)
def _source(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A client's address as text → its object (cached: a sandbox's few addresses open every connection)."""
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def _allowed(verdict: Verdict) -> bool:
    return verdict.action is not Enforcement.BLOCK


def _worth_recording(verdict: Verdict) -> Verdict | None:
    return None if verdict.action is Enforcement.ALLOW else verdict


def _allow(verdict: Verdict) -> Verdict | None:
    return verdict if verdict.action is Enforcement.ALLOW else None


class Gate:
    """Policy, bindings and detectors together; one per proxy worker. Stateless between connections (but for which
    sandbox each source address is in, kept per policy)."""

    def __init__(
        self,
        policy: Policy,
        names_for: NamesFor,
        name_detector: Detector,
        stream: tuple[Detector, ...],
        own: Callable[[], Collection[Address]] = frozenset,
        this_host: ThisHost = refusal,
    ):
        self.policy = policy
        self.own = own
        """The gateway's own addresses (`egress.thishost.OwnAddresses`): never dialled, whatever the policy."""
        self.this_host = this_host
        """The refusal of the gateway itself by any name (`egress.thishost.refusal`; only tests whose origins listen
        on loopback replace it)."""
        self._sandboxes: dict[str, Sandbox | None] = {}
        """Source address → its sandbox under ``_sandboxes_of`` (`sandbox`)."""
        self._sandboxes_of: Policy | None = None
        self._verdicts: dict[tuple[object, ...], tuple[Sandbox, Verdict]] = {}
        """`on_connect`'s and `_tls`'s verdicts by their arguments (the sandbox by identity, kept beside the verdict
        so its id names no other object while the entry lives), for ``_verdicts_of`` (`_verdict`)."""
        self._verdicts_of: Policy | None = None
        self.names_for = names_for
        self.name_detector = name_detector
        self.stream = stream

    def sandbox(self, source: str) -> Sandbox | None:
        """The sandbox ``source`` (a client's address as text) belongs to, if any; kept per policy (a sandbox's
        few addresses open every connection: the walk over every sandbox's networks was a few percent of a
        relayed connection's Python time)."""
        policy = self.policy
        if policy is not self._sandboxes_of:  # a reload assigns a new policy: what was kept is for the old one
            self._sandboxes = {}
            self._sandboxes_of = policy
        try:
            return self._sandboxes[source]
        except KeyError:
            pass
        address = _source(source)
        found = policy.sandbox_for(address) if address is not None else None
        if len(self._sandboxes) >= SANDBOXES_KEPT:
            self._sandboxes.clear()
        self._sandboxes[source] = found
        return found

    def on_client(self, source: str) -> Verdict | None:
        """A connection from ``source``: a verdict if it belongs to no sandbox (spoofed or misrouted)."""
        return decide_unknown_source(source) if self.sandbox(source) is None else None

    def on_connect(self, sandbox: Sandbox, dst: str, dport: int) -> Verdict:
        """Before dialling ``dst``: could any rule allow a connection there? (names bound to it, or a network).
        Never when ``dst`` is the gateway itself by any name (red team 10b): blocked in every mode, first."""
        refused = self.this_host(dst, self.own())
        if refused is not None:
            return refused
        names = self.names_for(sandbox.name, dst)
        key = ("raw", id(sandbox), dst, dport, names)
        return self._verdict(key, sandbox) or self._keep(key, sandbox, decide_raw(sandbox, dst, dport, "tcp", names))

    def _verdict(self, key: tuple[object, ...], sandbox: Sandbox) -> Verdict | None:
        """The verdict kept for ``key`` (made for ``sandbox`` itself), if any. `decide_raw` and `decide_tls` read
        nothing but their arguments and the sandbox's rules, so a kept verdict is the one they would give again
        (a sandbox's connections go to few addresses: the two were a tenth of the accept's decision). The bound
        names are part of the key, so a binding's change or expiry is a new key; a reload, a new policy and new
        sandboxes: what was kept is forgotten at the next connection."""
        if self.policy is not self._verdicts_of:
            self._verdicts = {}
            self._verdicts_of = self.policy
            return None
        kept = self._verdicts.get(key)
        return kept[1] if kept is not None and kept[0] is sandbox else None

    def _keep(self, key: tuple[object, ...], sandbox: Sandbox, verdict: Verdict) -> Verdict:
        if len(self._verdicts) >= VERDICTS_KEPT:
            self._verdicts.clear()
        self._verdicts[key] = (sandbox, verdict)
        return verdict

    def on_first_bytes(
        self, sandbox: Sandbox, meta: FlowMeta, client: bytes, server: bytes, watching: bool = False
    ) -> Decision:
        """``watching``: the caller relays a ``watch`` decision through the TLS shape watcher (the front does; a
        caller that does not gets a refusal instead of an unwatched passthrough)."""
        if not client:
            if not server:
                return Decision(Kind.WAIT)
            return self._raw(sandbox, meta, client, server)  # server speaks first (SSH, SMTP...)
        hello = tls.parse_client_hello(client) if tls.looks_like_tls(client) else None
        if hello is not None:
            # A record header is TLS only if a ClientHello follows it (issue 9: a 5-byte fake header before
            # JSON-RPC was passed through as "TLS without SNI"); anything else is inspected as a raw stream.
            if hello is MORE and len(client) >= HEAD_WAIT_LIMIT:
                hello = tls.parse_client_hello(client, partial=True)  # a hello past the wait: judged on what came
            return self._tls(sandbox, meta, client, watching, hello)
        if http.looks_like_http_request(client) or _http_like(client):
            return self._http(sandbox, meta, client)
        return self._raw(sandbox, meta, client, server)

    def _named_finding(self, meta: FlowMeta, client: bytes, hello: tls.ClientHello | None = None) -> Finding | None:
        """The name detector's finding on ``client``; ``hello``: its ClientHello, read already (not read again)."""
        view = FlowView(meta, client, b"", complete=True)
        if hello is not None and not hello.truncated:
            view.memo[tls.HELLO_MEMO] = hello
        result = self.name_detector(view)
        return result if isinstance(result, Finding) else None

    def _tls(
        self, sandbox: Sandbox, meta: FlowMeta, client: bytes, watching: bool, hello: tls.ClientHello | _More | None
    ) -> Decision:
        """``hello``: ``client``'s ClientHello as `on_first_bytes` read it (read once per decision)."""
        if hello is MORE:
            return Decision(Kind.WAIT)
        network = network_rule_for(sandbox, meta.dst, meta.dport)
        if network is not None and not isinstance(hello, tls.ClientHello):
            return self._raw(sandbox, meta, client, b"")  # a record header, then no ClientHello: judged as bytes
        sni = hello.sni if isinstance(hello, tls.ClientHello) else None
        noted: Verdict | None = None
        finding = self._named_finding(meta, client, hello if isinstance(hello, tls.ClientHello) else None)
        if finding is not None:
            verdict = decide_finding(sandbox, finding)
            if not _allowed(verdict):
                return Decision(Kind.REFUSE, verdict, sni or "")
            noted = _worth_recording(verdict)  # report mode's would-block, or a detector set to record
        bound = sni is not None and sni in self.names_for(sandbox.name, meta.dst)
        key = ("tls", id(sandbox), meta.dst, meta.dport, sni, bound)
        verdict = self._verdict(key, sandbox) or self._keep(
            key, sandbox, decide_tls(sandbox, meta.dst, meta.dport, sni, bound)
        )
        if not _allowed(verdict):
            return Decision(Kind.REFUSE, verdict, sni or "")
        if sni is not None and verdict.action is Enforcement.ALLOW and sandbox.decrypts(sni):
            return Decision(Kind.INTERCEPT, noted, sni, _allow(verdict))
        watch = network is not None and not network.expects(Expect.ANY)
        if network is not None and watch and not watching:
            unwatched = decide_finding(sandbox, _unwatched(network.rule_id, meta))
            if not _allowed(unwatched):
                return Decision(Kind.REFUSE, unwatched, sni or "")
            noted = noted or unwatched
        elif network is None and not watching and sandbox.detectors.mining_shape is not DetectorAction.ALLOW:
            # A host rule's TLS is watched for the mining shape by the front only: one that reaches mitmproxy
            # instead (a client silent past the front's wait, then its hello; a hello over the peek) would pass
            # without the watcher (issue 9: an agent that delays its hello mines through a bound name).
            unwatched = decide_finding(sandbox, _unwatched(verdict.rule, meta))
            if not _allowed(unwatched):
                return Decision(Kind.REFUSE, unwatched, sni or "")
            noted = noted or unwatched
        return Decision(Kind.PASSTHROUGH, _worth_recording(verdict) or noted, sni or "", _allow(verdict), watch)

    def _http(self, sandbox: Sandbox, meta: FlowMeta, client: bytes) -> Decision:
        if not http.looks_like_http_request(client):  # `_http_like`: a method the reader does not know
            whole = b"\n" in client or len(client) >= HEAD_WAIT_LIMIT
            return self._unread_http(sandbox, meta, client) if whole else Decision(Kind.WAIT)
        request = http.parse_request(client)
        if request is MORE and len(client) < HEAD_WAIT_LIMIT:
            if encrypted.opening(client) is not encrypted.Opening.ENCRYPTED:
                return Decision(Kind.WAIT)
            request = None  # a method word, then random bytes: judged as bytes
        if not isinstance(request, http.HttpRequest):
            return self._unread_http(sandbox, meta, client)
        host = request.headers.get("host", "").rsplit(":", 1)[0].strip().lower().rstrip(".")
        if request.method == "CONNECT":
            host = request.target.rsplit(":", 1)[0].lower()
        noted: Verdict | None = None
        port = authority.split_host_port(request.headers.get("host", ""))[1]
        if request.method != "CONNECT" and authority.port_differs(port, meta.dport):
            verdict = decide_authority_port(sandbox, meta.dst, meta.dport, host, port)
            if not _allowed(verdict):
                return Decision(Kind.HTTP, verdict, host)  # answered as HTTP: a 403 with the reason
            noted = _worth_recording(verdict)
        finding = self._named_finding(meta, client) or self.inspect_once(meta, client, b"")
        if finding is not None:
            verdict = decide_finding(sandbox, finding)
            if not _allowed(verdict):
                # Still answered as HTTP, so the agent reads why (403 with the reason).
                return Decision(Kind.HTTP, verdict, host)
            noted = _worth_recording(verdict)
        bound = bool(host) and host in self.names_for(sandbox.name, meta.dst)
        verdict = decide_http(sandbox, meta.dst, meta.dport, host or None, bound)
        return Decision(Kind.HTTP, _worth_recording(verdict) or noted, host, _allow(verdict))

    def _unread_http(self, sandbox: Sandbox, meta: FlowMeta, client: bytes) -> Decision:
        """A client opening that starts like an HTTP request (a method and a space) but that the gate's reader does
        not take as an HTTP/1.x head (HTTP/0.9, ``HTTP/2.0`` or ``http/1.1`` as version, a field line without a
        colon or with a name that is not a token, ``Host :``, a head past the reader's limit): its Host, its
        target, go unjudged, and lenient servers route such a request by them (red team 9: blocked.lab's page came
        back through a forwarder on allowed.lab). Where the destination's rule expects ``http`` but not ``any``
        it is refused as mitmproxy's own refusals are recorded (``tunnel``/``http-protocol-error``) instead of
        being relayed as a raw stream; what the raw path refuses anyway keeps its own reason, and a rule that
        says ``any`` (or does not take ``http``: the raw path refuses the opening) is left to the raw path."""
        decision = self._raw(sandbox, meta, client, b"")
        rule = self.expecting(sandbox, meta)
        if decision.kind is not Kind.INSPECT or rule is None or rule.expects(Expect.ANY):
            return decision
        verdict = decide_finding(sandbox, _unread_http_finding(meta, client))
        if not _allowed(verdict):
            return Decision(Kind.REFUSE, verdict)
        return Decision(Kind.INSPECT, decision.verdict or verdict, allow=decision.allow)

    def _raw(self, sandbox: Sandbox, meta: FlowMeta, client: bytes, server: bytes) -> Decision:
        noted: Verdict | None = None
        rule = self.expecting(sandbox, meta)
        if client[:4] == H2_PREFACE[:4] and (rule is None or not rule.expects(Expect.ANY)):
            if len(client) < len(H2_PREFACE) and H2_PREFACE.startswith(client):
                return Decision(Kind.WAIT)
            if client.startswith(H2_PREFACE):
                verdict = decide_finding(sandbox, _h2c(meta))
                if not _allowed(verdict):
                    return Decision(Kind.REFUSE, verdict)
                noted = _worth_recording(verdict)
        finding = self.inspect_once(meta, client, server)
        if rule is not None:
            judged = _expected(rule, meta, client, server, finding)
            if judged is MORE:
                return Decision(Kind.WAIT)
            finding = judged if isinstance(judged, Finding) else None
        if finding is not None:
            verdict = decide_finding(sandbox, finding)
            if not _allowed(verdict):
                return Decision(Kind.REFUSE, verdict)
            noted = _worth_recording(verdict)
        verdict = decide_raw(sandbox, meta.dst, meta.dport, "tcp", self.names_for(sandbox.name, meta.dst))
        if not _allowed(verdict):
            return Decision(Kind.REFUSE, verdict)
        return Decision(Kind.INSPECT, _worth_recording(verdict) or noted, allow=_allow(verdict))

    def on_request(self, sandbox: Sandbox, meta: FlowMeta, host: str, sni: str | None) -> Verdict:
        """A later HTTP request on a judged connection: keep-alive (Host re-checked against the address) or
        inside intercepted TLS (Host must be the SNI that was allowed: anything else is domain fronting)."""
        if sni is not None:
            return decide_fronting(sandbox, sni, host)
        bound = bool(host) and host in self.names_for(sandbox.name, meta.dst)
        return decide_http(sandbox, meta.dst, meta.dport, host or None, bound)

    def expecting(self, sandbox: Sandbox, meta: FlowMeta) -> Expecting | None:
        """What the rule of ``meta``'s destination expects of a stream with no name of its own (`_expected`): the
        network rule that covers the address and port, else the host rules of the names bound to the address on
        that port (red team 6: a host rule's raw stream was held to nothing, so Stratum in unaligned PER crossed
        it). Several names' rules: what any of them expects, as any of them lets the stream through
        (`decide_raw`). None when no rule covers it (the stream is then refused by its address)."""
        network = network_rule_for(sandbox, meta.dst, meta.dport)
        if network is not None:
            return network
        return host_expecting(sandbox, self.names_for(sandbox.name, meta.dst), meta.dport)

    def inspector(self, meta: FlowMeta) -> FlowInspector:
        """Inspection state for a relayed stream (INSPECT, and decrypted or upgraded payloads). To a destination
        whose rule (network or host: `expecting`) does not say ``any`` it also judges the opening again
        (`encrypted.detect`; a host rule's up to a ClientHello in it, `encrypted.detect_upgrading`: TLS begun in
        band is the gate's to judge), and it leaves SSH alone where the rule says ``ssh``."""
        sandbox = self.sandbox(meta.src)
        rule = self.expecting(sandbox, meta) if sandbox is not None else None
        if rule is None:
            return FlowInspector(meta, self.stream)
        detectors = tuple(d for d in self.stream if not (d is ssh.detect and rule.expects(Expect.SSH)))
        if not rule.expects(Expect.ANY):
            detectors += OPAQUE if isinstance(rule, NetworkRule) else OPAQUE_UPGRADING
        return FlowInspector(meta, detectors)

    def strict(self, sandbox: Sandbox, meta: FlowMeta) -> bool:
        """Whether a relayed raw stream (INSPECT) to ``meta``'s destination that the inspection cap leaves
        unidentified is blocked (`egress.detect.engine.unidentified_finding`): unless its rule (network or host,
        `expecting`) says ``any`` (issue 9: padding past the cap bought an uninspected connection to a bound
        name), and unless `bound_tls_in` the stream (the caller asks)."""
        rule = self.expecting(sandbox, meta)
        return rule is None or not rule.expects(Expect.ANY)

    def bound_tls_in(self, sandbox: Sandbox, meta: FlowMeta, client: bytes) -> bool:
        """Whether ``client`` (a raw stream to a host rule's port) carries, after its opening, a whole ClientHello
        whose SNI is bound to the destination: a protocol that upgrades to TLS (STARTTLS, PostgreSQL's
        SSLRequest) is TLS to a named host, not an unidentified stream. A network rule's destination gets no
        such pass (its rule names what it speaks)."""
        return self.bound_hello_at(sandbox, meta, client) >= 0

    def bound_hello_at(self, sandbox: Sandbox, meta: FlowMeta, client: bytes) -> int:
        """Where in ``client`` that ClientHello starts (`bound_tls_in`), or -1: the TLS after a plaintext opening
        is watched from there (`egress.proxy.upgraded`)."""
        if network_rule_for(sandbox, meta.dst, meta.dport) is not None:
            return -1
        names = self.names_for(sandbox.name, meta.dst)
        at = client.find(b"\x16\x03")
        while at >= 0 and names:
            hello = tls.parse_client_hello(client[at:], partial=True)
            if isinstance(hello, tls.ClientHello) and hello.sni is not None and hello.sni in names:
                # A name on the decrypt list is never watched undecrypted: `unbound_hello` refuses it.
                return -1 if sandbox.decrypts(hello.sni) else at
            at = client.find(b"\x16\x03", at + 1)
        return -1

    def unbound_hello(self, sandbox: Sandbox, meta: FlowMeta, client: bytes) -> Decision | None:
        """A whole ClientHello in ``client`` (a raw stream to a host rule's port, after a plaintext opening) whose
        name is not bound to the destination: judged at that hello as the front judges a direct TLS connection
        (`_tls`, the same decision: refused with the front's reason, or let on with what it records), not left
        to the inspection's cap (issue 9). None while there is none, or when its name is bound (`bound_hello_at`:
        the TLS is watched instead); a network rule's destination is never asked (its rule names what it
        speaks)."""
        if network_rule_for(sandbox, meta.dst, meta.dport) is not None:
            return None
        names = self.names_for(sandbox.name, meta.dst)
        at = client.find(b"\x16\x03")
        while at >= 0:
            hello = tls.parse_client_hello(client[at:])
            if isinstance(hello, tls.ClientHello) and not hello.truncated:
                if hello.sni is not None and hello.sni in names:
                    return self._undecrypted(sandbox, meta, hello.sni) if sandbox.decrypts(hello.sni) else None
                return self._tls(sandbox, meta, client[at:], True, hello)
            at = client.find(b"\x16\x03", at + 1)
        return None

    @staticmethod
    def _undecrypted(sandbox: Sandbox, meta: FlowMeta, sni: str) -> Decision:
        """TLS begun after a plaintext opening to a name the sandbox's decrypt list holds: mitmproxy intercepts a
        connection's TLS only from its first byte, so this one could pass only undecrypted, which the decrypt list
        rules out (red team 3: Stratum inside it reached the pool). Refused as a tunnel (report mode: recorded)."""
        text = f"TLS to {sni} ({meta.dst}:{meta.dport}) begun after a plaintext opening; {sni} is on the decrypt list"
        finding = Finding(Category.TUNNEL, "tls-not-decrypted", encrypted.NAME, evidence(text))
        verdict = decide_finding(sandbox, finding)
        if not _allowed(verdict):
            return Decision(Kind.REFUSE, verdict, sni)
        return Decision(Kind.INSPECT, _worth_recording(verdict), sni)

    def on_unfinished_head(self, sandbox: Sandbox, meta: FlowMeta, client: bytes, ended: str) -> Verdict | None:
        """A client that ended (``ended``: how) with ``client``, all it sent, an HTTP request head never finished:
        the verdict on the pool content in it (`egress.proxy.unfinished`: the pool detectors and the name
        detector), or None (not such a head, or nothing of a pool's in it)."""
        finding = unfinished.pool_finding(client, meta, (*MINING, self.name_detector), ended)
        return decide_finding(sandbox, finding) if finding is not None else None

    def inspect_once(self, meta: FlowMeta, client: bytes, server: bytes) -> Finding | None:
        inspector = self.inspector(meta)
        inspector.feed_stream(True, client)
        return inspector.feed_stream(False, server)


class Expecting(Protocol):
    """A rule's ``expect:`` as the gate reads it: a `NetworkRule`, a `HostRule`, or several host rules `Joined`."""

    @property
    def rule_id(self) -> str: ...

    @property
    def expect(self) -> frozenset[Expect]: ...

    def expects(self, protocol: Expect) -> bool: ...


@dataclass(frozen=True, slots=True)
class Joined:
    """The host rules of several names bound to one address and port: what any of them expects."""

    rule_id: str
    expect: frozenset[Expect]

    def expects(self, protocol: Expect) -> bool:
        return Expect.ANY in self.expect or protocol in self.expect


def host_expecting(sandbox: Sandbox, names: Iterable[str], port: int) -> Expecting | None:
    """What the host rules that let a raw stream to ``port`` through for ``names`` (the names bound to its
    address) expect: one rule's own ``expect``, several `Joined`; None when none does."""
    rules: dict[str, HostRule] = {}
    for name in sorted(names):
        rule = sandbox.host_rule(name, port)
        if rule is not None:
            rules.setdefault(rule.rule_id, rule)
    if len(rules) <= 1:
        return next(iter(rules.values()), None)
    return Joined(", ".join(rules), frozenset().union(*(rule.expect for rule in rules.values())))


def _expected(rule: Expecting, meta: FlowMeta, client: bytes, server: bytes, finding: Finding | None) -> Result:
    """What a stream with no name of its own, to ``rule``'s destination (a network rule's, or a host rule's port
    of a name bound to the address: `Gate.expecting`), comes to under its ``expect:`` list:
    the detectors' ``finding`` (minus SSH's where SSH is expected), an SSH or fully encrypted opening the rule does
    not expect, any other opening where the rule expects neither ``http`` nor ``any`` (`not_expected`), or MORE
    while the opening is too short to judge."""
    first, side = (client, "client") if client else (server, "server")
    seen = encrypted.opening(first)
    if seen is None:
        return finding if finding is not None else MORE  # a detector that already knows need not wait
    if seen is encrypted.Opening.SSH:
        if rule.expects(Expect.SSH):
            return None if finding is not None and finding.detector == ssh.NAME else finding
        line = first.lstrip(b"\r\n").split(b"\n", 1)[0]
        text = f"SSH to {meta.dst}:{meta.dport} through {rule.rule_id}, which does not expect ssh: {evidence(line)}"
        return finding or Finding(Category.TUNNEL, "ssh-not-expected", encrypted.NAME, evidence(text))
    if seen is encrypted.Opening.ENCRYPTED and not rule.expects(Expect.ANY):
        return finding or encrypted.finding(first, side)
    if rule.expects(Expect.HTTP):
        # A rule that takes plain HTTP takes any body: a plaintext stream is left to the detectors and the cap
        # (`strict`), as JSON-RPC over raw TCP to a compute address is (tests/security/test_streams_framing.py).
        return finding
    return finding or not_expected(rule, meta, first, side, seen)


def not_expected(rule: Expecting, meta: FlowMeta, first: bytes, side: str, seen: encrypted.Opening) -> Finding:
    """A stream to ``rule``'s destination that opens as none of what the rule expects (a plaintext line protocol,
    a server's greeting, a TLS or HTTP opening that did not make a whole hello or request head): refused at its
    opening where the rule expects neither ``http`` nor ``any`` (red team: to a rule expecting ``tls``, a
    plain-text reverse shell, and bulk lines 12 KiB per connection, stayed below the inspection cap that alone
    judged it)."""
    expected = ", ".join(sorted(rule.expect))
    text = f"{side} opens {seen} to {meta.dst}:{meta.dport} through {rule.rule_id} (expects {expected}): {first[:24]!r}"
    return Finding(Category.TUNNEL, NOT_EXPECTED, encrypted.NAME, evidence(text))


H2_PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""The client connection preface of HTTP/2 (RFC 9113 §3.4): clear-text HTTP/2 with prior knowledge (h2c)."""


def _h2c(meta: FlowMeta) -> Finding:
    """Clear-text HTTP/2 with prior knowledge: neither the front nor mitmproxy reads its frames (red team 3: Stratum
    cut into 7-byte DATA frames passed the stream detectors, the frame headers breaking every JSON value), so it is
    refused where the rule does not say ``any``, as a stream the gateway cannot inspect."""
    text = f"clear-text HTTP/2 (prior knowledge) to {meta.dst}:{meta.dport}: its frames are not inspected"
    return Finding(Category.TUNNEL, "h2c-not-inspected", encrypted.NAME, evidence(text))


_REQUEST_START: Final = re.compile(rb"([A-Za-z][A-Za-z0-9_-]{0,23}) +[^\r\n]*")
"""A word and a space, then the rest of a first line: how an HTTP request line starts."""


def _http_like(client: bytes) -> bool:
    """Whether ``client`` starts like an HTTP request line the gate's reader does not take (`http.parse_request`
    knows RFC 9110's and WebDAV's methods, in capitals): any word whose line ends in an ``HTTP/`` version, a
    known method in any case and a path or URL (HTTP/0.9), or such a line still arriving (its end decides).
    nginx and lenient servers take any method word and route it by its Host (red team 9): relayed raw, the Host
    went unjudged."""
    match = _REQUEST_START.match(client)
    if match is None:
        return False
    if match.end() == len(client):
        return True  # the line is still arriving: judged whole (`Gate._http`)
    words = match[0].split()
    if words[-1].upper().startswith(b"HTTP/"):
        return True
    target = words[1] if len(words) == 2 else b""  # HTTP/0.9: a method and a target (`get key` is memcached's)
    return match[1].upper() in http.METHODS and (target.startswith((b"/", b"\\")) or b"://" in target)


HTTP_PROTOCOL_ERROR: Final = "http-protocol-error"
"""The protocol of an HTTP opening the gate's reader refused (`Gate._unread_http`), as mitmproxy's refusals are
recorded (`egress.proxy.mitm.flows.protocol_refusal`)."""


def _unread_http_finding(meta: FlowMeta, client: bytes) -> Finding:
    line = client.split(b"\n", 1)[0].rstrip(b"\r")
    text = f"an HTTP opening to {meta.dst}:{meta.dport} that is not an HTTP/1.x head the gateway reads: {line[:80]!r}"
    return Finding(Category.TUNNEL, HTTP_PROTOCOL_ERROR, "proxy", evidence(text))


def _unwatched(rule: str, meta: FlowMeta) -> Finding:
    text = f"TLS to {meta.dst}:{meta.dport} through {rule} that the front could not watch (slow or huge hello)"
    return Finding(Category.TUNNEL, "tls-unwatched", encrypted.NAME, evidence(text))


def flow_meta(src: tuple[str, int], dst: tuple[str, int]) -> FlowMeta:
    return FlowMeta(Transport.TCP, src[0], src[1], dst[0], dst[1])
