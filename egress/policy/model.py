"""The runtime policy: frozen, validated data that the decision, the nftables renderer, the proxy and the DNS
resolver read. Built only by `egress.policy.loader.load_policy` from a ``version: 1`` YAML file.

Every rule keeps a ``rule_id`` (its place in the file, e.g. ``sandboxes.agents.allow.hosts[2]``) and its line,
so a verdict can name the rule that decided it.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from egress.policy.index import HostIndex, NetworkIndex

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Mode(enum.StrEnum):
    """``enforce`` blocks; ``report`` lets traffic pass and records what enforce would have blocked."""

    ENFORCE = "enforce"
    REPORT = "report"


class DetectorAction(enum.StrEnum):
    """What to do with a flow a detector recognised (per category, per sandbox)."""

    BLOCK = "block"
    """Close the connection (or refuse the name) and record it."""
    RECORD = "record"
    """Let it pass but record it."""
    ALLOW = "allow"
    """Let it pass silently."""


class Expect(enum.StrEnum):
    """A protocol a rule expects its destination to speak (``expect:`` of a network or host rule; docs/policy.md)."""

    TLS = "tls"
    """TLS: a whole ClientHello, then records (its SNI is judged by `TlsNames`)."""
    HTTP = "http"
    """Plain HTTP requests."""
    SSH = "ssh"
    """SSH (a remote shell and a port forwarder by design: it must be named)."""
    QUIC = "quic"
    """QUIC (a UDP network rule: its long-header packets are otherwise refused by the UDP gate)."""
    DTLS = "dtls"
    """DTLS (a UDP network rule: its records are otherwise refused by the UDP gate)."""
    ANY = "any"
    """Anything, fully encrypted streams included: no protocol is checked, only the detectors run."""


DEFAULT_EXPECT: frozenset[Expect] = frozenset({Expect.TLS, Expect.HTTP})
"""What a rule expects when it does not say: the protocols a user means by "this address" or "this host" (web
APIs, registries, object stores). SSH and unidentified encrypted streams must be named (``ssh``, ``any``)."""


@dataclass(frozen=True, slots=True)
class HostRule:
    """An allowed host name: exact (``pypi.org``) or every name below a domain (``*.pythonhosted.org``)."""

    pattern: str
    """IDNA (punycode), lowercase, no trailing dot; a leading ``*.`` means strictly below that domain."""
    ports: frozenset[int]
    """Allowed TCP ports; empty means any port."""
    rule_id: str
    line: int
    answers: tuple[Network, ...] = ()
    """Networks every address the resolver answers for a name of this rule must be in (``answers:`` in the file);
    empty: any global address (and the sandbox's ``dns.allow_ranges``)."""
    expect: frozenset[Expect] = DEFAULT_EXPECT
    """The protocols this host speaks (``expect:``, as a network rule's; default `DEFAULT_EXPECT`): TLS and HTTP
    that name it are checked against it, and so is a raw stream to its address and port (red team 6: a stream
    that opens as no protocol, Stratum in unaligned PER, crossed a host rule's port unread)."""

    def expects(self, protocol: Expect) -> bool:
        return Expect.ANY in self.expect or protocol in self.expect

    def matches(self, name: str, port: int) -> bool:
        if self.ports and port not in self.ports:
            return False
        if self.pattern.startswith("*."):
            return name.endswith(self.pattern[1:])
        return name == self.pattern


MAX_CONNECTIONS = 1024
"""Default bound on the TCP connections one sandbox holds at once (``max_connections``): every source of the
sandbox and both IP versions together (conntrack entries); a new one over it is dropped and recorded."""
MAX_CONNECTIONS_RANGE = (16, 1_000_000)


class TlsNames(enum.StrEnum):
    """Which TLS server names a network rule accepts (``tls:``)."""

    BOUND = "bound"
    """Only an SNI the gateway resolver answered with this address; no SNI or another name is blocked."""
    ANY = "any"
    """Any SNI or none; a missing or unbound one is still recorded (action ``record``)."""


@dataclass(frozen=True, slots=True)
class NetworkRule:
    """An allowed destination network, for destinations reached by address rather than by name."""

    network: Network
    ports: frozenset[int]
    """Allowed ports; empty means any port."""
    protocols: frozenset[str]
    """``tcp`` and/or ``udp``."""
    rule_id: str
    line: int
    expect: frozenset[Expect] = DEFAULT_EXPECT
    """The protocols this destination speaks (TCP); see `Expect` and `DEFAULT_EXPECT`."""
    tls: TlsNames = TlsNames.BOUND
    """Which TLS server names pass through this rule."""

    def expects(self, protocol: Expect) -> bool:
        return Expect.ANY in self.expect or protocol in self.expect


@dataclass(frozen=True, slots=True)
class DnsLimits:
    """Per-sandbox DNS tunnel thresholds. The defaults are the DNS tunnel tracker's own (reasoned in
    docs/dns-tunnel-thresholds.md); the fields mirror `egress.detect.dns_tunnel.DnsTunnelLimits`."""

    max_name_length: int = 180
    """Longest query name answered at all; a longer one is refused as a tunnel."""
    encoded_subdomains: int = 5
    """Distinct subdomains with an encoded-looking label under one base domain."""
    volume_subdomains: int = 30
    """Distinct subdomains, of long mean length, under one base domain."""
    rare_type_subdomains: int = 3
    """NULL / private-type questions under one base domain."""
    exfil_chars: int = 80
    """Encoded characters in one query that make it exfiltration on its own."""
    odd_subdomains: int = 3
    """Distinct subdomains with bytes no host name has (``=``, ``+``, ``/``, 8-bit)."""
    tunnel_hold: int = 3600
    """Seconds a base domain found tunnelling stays refused for the sandbox (every query under it)."""
    allow_ranges: tuple[Network, ...] = ()
    """Non-global networks answers may point into (the lab's 198.18.0.0/15, an internal service); an answer with
    another non-global address (private, loopback, link-local, ...) is dropped: DNS rebinding."""
    deny_ranges: tuple[Network, ...] = ()
    """Networks no answer may point into (known pools, blocked sites): such an answer is refused and recorded."""


@dataclass(frozen=True, slots=True)
class DetectorActions:
    mining: DetectorAction = DetectorAction.BLOCK
    tunnel: DetectorAction = DetectorAction.BLOCK
    crypto_node: DetectorAction = DetectorAction.BLOCK
    mining_shape: DetectorAction = DetectorAction.RECORD
    """Mining told from the record shape of TLS a network rule passes (egress.detect.miningshape): ``record`` by
    default (a feed with one event size can take the shape), ``block`` closes the connection; ``mining`` still
    caps it (``mining: allow`` lets it pass too)."""
    mining_shape_window: int = 60
    """Seconds of that watcher's window (its first minute); its time thresholds scale with it, so a lab replaying
    recorded sessions N times faster sets 60/N (docs/policy.md)."""


QUARANTINE_CATEGORIES: frozenset[str] = frozenset({"mining", "tunnel", "crypto-node"})
"""Finding categories a quarantine may count (`egress.detect.base.Category` values)."""


@dataclass(frozen=True, slots=True)
class Quarantine:
    """``quarantine:``: after ``after`` findings of ``categories`` within ``within`` seconds, the sandbox is cut off
    (every packet from and to its sources dropped, established connections too) until released
    (`egress.gateway.quarantine`, docs/quarantine.md)."""

    after: int
    """Findings within the window that cut the sandbox off (1-10000)."""
    within: int
    """The window, in seconds (1-604800)."""
    categories: frozenset[str]
    """Which findings count: of `QUARANTINE_CATEGORIES` (default mining and tunnel)."""
    webhook: str = ""
    """An http(s) URL POSTed a JSON body when the sandbox is cut off (``""``: none)."""
    line: int = 0


@dataclass(frozen=True, slots=True)
class Sandbox:
    name: str
    sources: tuple[Network, ...]
    """Source networks the sandbox's traffic comes from; anything else on the sandbox side is spoofed."""
    interface: str | None
    """The gateway interface the sandbox is behind (``None``: whatever ``--sandbox-if`` says)."""
    mode: Mode
    hosts: tuple[HostRule, ...]
    networks: tuple[NetworkRule, ...]
    decrypt: tuple[str, ...]
    """Host patterns whose TLS is intercepted for deep inspection (same syntax as `HostRule.pattern`)."""
    dns: DnsLimits
    detectors: DetectorActions
    line: int
    upgrades: tuple[str, ...] = ()
    """HTTP ``Upgrade`` protocols (lowercase tokens) a request may switch to besides ``websocket``; after the
    ``101`` the connection is relayed through the detectors, as raw TCP is. Empty by default: any other upgrade
    (``h2c``, ``rawtcp``...) is refused, since mitmproxy would relay it uninspected."""
    any_source: bool = False
    """``any_source: true``: the operator confirmed a catch-all source (``0.0.0.0/0``, ``::/0``), which makes every
    address on the sandbox's interface this sandbox; without it such a source is refused."""
    quarantine: Quarantine | None = None
    """When repeated findings cut the sandbox off (``None``: never)."""
    flow_log: bool = False
    """``flow_log: true``: its allowed connections are logged, aggregated (docs/flow-log.md). Off by default: it
    is a record of what the agent was allowed to do (privacy, volume), which an operator opts into."""
    link_pins_sources: bool = False
    """``link_pins_sources: true``: the operator states that the link this sandbox shares with others pins each
    one's source addresses (switch port security, hypervisor anti-spoofing); without it two sandboxes behind one
    interface are refused (`egress.policy.links`)."""
    max_connections: int = MAX_CONNECTIONS
    """TCP connections the sandbox may hold at once, all its sources together (nftables ``ct count``); a new one over
    it is dropped and recorded ``connection-limit``: one sandbox's flood cannot take every proxy worker."""

    _index: tuple[HostIndex, NetworkIndex] | None = field(default=None, init=False, repr=False, compare=False)
    """The rules by name and by address (egress.policy.index), built on first use: no part of what the sandbox
    is, never pickled, rebuilt by a copy (`dataclasses.replace`)."""

    def _indexes(self) -> tuple[HostIndex, NetworkIndex]:
        index = self._index
        if index is None:  # two threads may both build it: the same answer either way
            index = (HostIndex(self.hosts), NetworkIndex(self.networks))
            object.__setattr__(self, "_index", index)
        return index

    def host_rule(self, name: str, port: int) -> HostRule | None:
        """The first allow rule that covers ``name`` on ``port``."""
        return self._indexes()[0].first(name, port)

    def name_allowed(self, name: str) -> HostRule | None:
        """The first allow rule that covers ``name`` on some port (what the resolver asks)."""
        return self._indexes()[0].first(name, None)

    def network_rule(self, address: Address, port: int, protocol: str) -> NetworkRule | None:
        """The first network rule that holds ``address`` and takes ``port`` over ``protocol``."""
        return self._indexes()[1].first(address, port, protocol)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled with its rules as columns (a tuple per field), not object by object: a policy of 100,000 hosts
        goes to each proxy worker at every reload, and the dataclass's own per-object state took seconds. The
        columns come in chunks of `RULES_PER_CHUNK` rules, each rebuilt by a call into Python (`_Rules`): pickle's
        C loops hold the interpreter lock without a break, and the supervisor's resolver must not wait for a
        whole policy's worth of them (issue 12: 100,000 rules were one stretch of ~100 ms)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        values["hosts"] = _chunks(HostRule, self.hosts)
        values["networks"] = _chunks(NetworkRule, self.networks)
        return _sandbox, (values,)

    def decrypts(self, name: str) -> bool:
        return any(
            name.endswith(pattern[1:]) if pattern.startswith("*.") else name == pattern for pattern in self.decrypt
        )


RULES_PER_CHUNK = 2048
"""Rules per pickled chunk: the longest stretch pickle spends in C on a sandbox's rules (about a millisecond)."""


@dataclass(frozen=True, slots=True)
class _Rules:
    """Pickling form of up to `RULES_PER_CHUNK` rules of one kind: its columns, rebuilt by `_rules`."""

    kind: type[Any]
    rules: Sequence[Any]

    def __reduce__(self) -> tuple[Any, ...]:
        columns = tuple(tuple(getattr(rule, f.name) for rule in self.rules) for f in dataclasses.fields(self.kind))
        return _rules, (self.kind, columns)


def rules_chunk(kind: type[Any], rules: Sequence[Any]) -> object:
    """Up to `RULES_PER_CHUNK` rules of one kind as pickle carries them: unpickled, a tuple of those rules."""
    return _Rules(kind, rules)


def _chunks(kind: type[Any], rules: Sequence[Any]) -> tuple[_Rules, ...]:
    return tuple(_Rules(kind, rules[at : at + RULES_PER_CHUNK]) for at in range(0, len(rules), RULES_PER_CHUNK))


def _rules(kind: type[Any], columns: tuple[tuple[Any, ...], ...]) -> tuple[Any, ...]:
    """One chunk's rules from their columns (`_Rules.__reduce__`)."""
    return tuple(map(kind, *columns))


def _sandbox(values: dict[str, Any]) -> Sandbox:
    """A `Sandbox` from `Sandbox.__reduce__`: its rules joined from their chunks (`_rules`)."""
    values["hosts"] = tuple(itertools.chain.from_iterable(values["hosts"]))
    values["networks"] = tuple(itertools.chain.from_iterable(values["networks"]))
    return Sandbox(**values)


class OnApply(enum.StrEnum):
    """What an applied policy does to connections already established (``on_apply:``)."""

    KEEP = "keep"
    """They keep the decision they were made under; only new connections see the new policy (the default)."""
    CLOSE_FORBIDDEN = "close_forbidden"
    """The proxy decides each open connection again under the new policy and closes those it would not allow."""


@dataclass(frozen=True, slots=True)
class Retention:
    max_age_days: int = 30
    max_records: int = 1_000_000
    """Per sandbox stream."""


@dataclass(frozen=True, slots=True)
class FlowLogSettings:
    """``flow_log:`` (top level): how the flow log of the sandboxes that keep one is kept (docs/flow-log.md)."""

    max_age_days: int = 7
    max_records: int = 200_000
    """Aggregates per sandbox."""
    max_destinations: int = 2000
    """Aggregates per sandbox and minute in each gateway process; more are folded into one ``(other)``."""


@dataclass(frozen=True, slots=True)
class Policy:
    version: int
    sandboxes: tuple[Sandbox, ...]
    retention: Retention = field(default_factory=Retention)
    file: str = "<memory>"
    on_apply: OnApply = OnApply.KEEP
    """What applying this policy does to established connections (`OnApply`)."""
    flow_log: FlowLogSettings = field(default_factory=FlowLogSettings)

    def index(self) -> Policy:
        """Build every sandbox's lookups now (egress.policy.index) and return the policy: a reload does it in a
        worker thread, so that the first DNS query after the swap does not pay for 100,000 rules on the event loop."""
        for sandbox in self.sandboxes:
            sandbox._indexes()
        return self

    def sandbox_for(self, source: Address) -> Sandbox | None:
        """The sandbox whose source networks contain ``source`` (first match in file order)."""
        for sandbox in self.sandboxes:
            if any(source in network for network in sandbox.sources):
                return sandbox
        return None
