"""Policy + gateway settings → one ``nft -f`` script for the gateway's own table (pure, no IO).

The script first deletes only our table (``table inet egress {}`` then ``delete table inet egress``, so it works
whether or not the table exists) and never flushes anything else; `egress.nft.runner.apply` loads it as one
transaction. docs/nftables.md explains the shape; the names of sets,
chains and log prefixes are in `egress.nft.names`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from egress.nft import counting
from egress.nft.names import (
    COUNTED_KINDS,
    METER_SIZE,
    METER_TIMEOUT,
    UNCOUNTED_MARK,
    LogKind,
    allow_set,
    count_chain,
    log_meter_set,
    log_prefix,
    quarantine_set,
    set_id,
    source_set,
)
from egress.nft.render_udp import UDP_GATE_CHAIN, UDP_SET_MIN, udp_groups, udp_lines
from egress.policy.model import Mode, Policy, Sandbox
from egress.policy.partition import MAX_PROCESSES, process_of

# allow_set is re-exported: egress.gateway.allowsets imports it from here.
__all__ = [
    "UDP_GATE_CHAIN",
    "UDP_SET_MIN",
    "GatewaySettings",
    "allow_set",
    "interfaces",
    "render",
    "render_lockdown",
    "render_quarantine",
]

_IFNAME = re.compile(r"[A-Za-z0-9_.@:-]{1,15}")
_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    """How the gateway host is wired; the policy says what is allowed, these say where."""

    sandbox_if: str
    """The interface the sandboxes are behind (a sandbox's own ``interface`` in the policy adds another)."""
    uplink_if: str
    """The interface towards the internet; forwarded sandbox traffic is masqueraded on it."""
    proxy_ports: tuple[int, ...] = (8081,)
    """One local port per proxy worker; new sandbox TCP connections are spread round-robin across them."""
    dns_port: int = 5353
    """The gateway resolver's local port; sandbox UDP and TCP to port 53 (any address) is redirected there."""
    more_dns_ports: tuple[int, ...] = ()
    """The ports of resolver processes 1, 2, ... (process 0 listens on ``dns_port``): each sandbox's DNS is
    redirected to the port of its process (`egress.policy.partition.process_of`). Empty: one process, as before."""
    nflog_group: int = 7
    """The nflog group every logged drop goes to."""
    table: str = "egress"
    """Our table (family inet); the only one the script touches."""
    log_rate: int = 50
    """Logged packets per second per rule where the log is not metered per key (spoofed sources, inbound traffic,
    lockdown), and for a sandbox's drops while the per-key meters are full. Drops themselves are never limited."""
    log_burst: int = 100
    key_log_rate: int = 10
    """Logged sandbox drops per second per (source, IP protocol, destination): a flood to one destination spends
    its own budget, not that of the sandbox's other attempts (the kernel counts what is not logged)."""
    key_log_burst: int = 20
    log_ceiling: int = 1000
    """Logged sandbox drops per second per rule, every key together (burst: twice as many): what the drop logger
    is asked to read at most, however many destinations a flood sprays."""
    uncounted_log_rate: int = 2000
    """Logged sandbox drops per second per rule that the kernel could not count (`UNCOUNTED_MARK`; burst: five
    times as many): each is logged once, unmetered, as its one record. An insert the kernel fails is rare (tens
    in a burst of 50,000 new keys); the bound is for a flood that fills a counting set (65,536 new keys within one
    read)."""
    masquerade: bool = True
    """Masquerade forwarded sandbox traffic (allowed UDP networks, report mode) on ``uplink_if``."""
    dhcp: bool = False
    """Let the sandboxes' DHCP (v4: UDP 68 → 67, v6: 546 → 547) reach this host, for a DHCP server the operator
    runs on the gateway: a client without an address yet (0.0.0.0, or its link-local address for DHCPv6) passes
    anti-spoofing for exactly that message shape, and the input guard accepts it. Nothing is forwarded for it."""

    def __post_init__(self) -> None:
        for name in (self.sandbox_if, self.uplink_if):
            if not _IFNAME.fullmatch(name):
                raise ValueError(f"bad interface name {name!r}")
        if not _IDENT.fullmatch(self.table):
            raise ValueError(f"bad table name {self.table!r}")
        ports = (*self.proxy_ports, *self.dns_ports)
        if not self.proxy_ports or len(set(ports)) != len(ports) or not all(0 < p < 65536 for p in ports):
            raise ValueError(f"proxy ports {self.proxy_ports} and DNS ports {self.dns_ports} must be distinct ports")
        if len(self.dns_ports) > MAX_PROCESSES:
            raise ValueError(f"at most {MAX_PROCESSES} resolver processes (got {len(self.dns_ports)} DNS ports)")
        if not 0 <= self.nflog_group < 65536:
            raise ValueError(f"bad nflog group {self.nflog_group}")
        rates = (self.log_rate, self.log_burst, self.key_log_rate, self.key_log_burst, self.log_ceiling)
        if min(*rates, self.uncounted_log_rate) < 1:
            raise ValueError("log rates, bursts and the log ceiling must be positive")

    @property
    def dns_ports(self) -> tuple[int, ...]:
        """Each resolver process's port, process 0's (``dns_port``) first."""
        return (self.dns_port, *self.more_dns_ports)


def interfaces(policy: Policy | None, settings: GatewaySettings) -> tuple[str, ...]:
    """Every sandbox-side interface: ``settings.sandbox_if`` first, then the policy's own, in file order."""
    names = [settings.sandbox_if]
    for sandbox in policy.sandboxes if policy else ():
        if sandbox.interface and sandbox.interface not in names:
            if not _IFNAME.fullmatch(sandbox.interface):
                raise ValueError(f"sandbox {sandbox.name!r}: bad interface name {sandbox.interface!r}")
            names.append(sandbox.interface)
    return tuple(names)


def _one_of(values: Iterable[str | int], quote: bool = False) -> str:
    items = [f'"{v}"' if quote else str(v) for v in values]
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


class _Script:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.lines: list[str] = []

    def add(self, line: str = "", depth: int = 0) -> None:
        self.lines.append("\t" * depth + line if line else "")

    def log_then(
        self, verdict: str, kind: LogKind, sandbox: str | None = None, match: str = "", version: int | None = None
    ) -> None:
        """Log (rate-limited; counted and metered per key for `COUNTED_KINDS`), then ``verdict``; ``version``: the
        IP version ``match`` already implies (its count and meter rules only: nft refuses ip and ip6 together)."""
        families = [(v, fam) for v, fam in _FAMILIES if version in (None, v)]
        s = self.settings
        log = f'log prefix "{log_prefix(kind, sandbox)}" group {s.nflog_group}'
        limit = f"limit rate {s.log_rate}/second burst {s.log_burst} packets"
        if kind in COUNTED_KINDS:
            # Counted before the log, in a chain of its own (the swap of generations rewrites only that chain's
            # rules, `egress.nft.counting`): a full set ends the jump there, it must not skip the verdict.
            self.add(f"{match}jump {count_chain(kind)}", 2)
            # A packet the kernel could not count is logged once, outside the meters, and decided: the log is its
            # one record (the drop logger does not take it for a counted packet's log). ICMP first, with a budget of
            # its own, as below.
            uncounted = f"meta mark & {UNCOUNTED_MARK:#010x} != 0 "
            rate = f"limit rate {s.uncounted_log_rate}/second burst {5 * s.uncounted_log_rate} packets"
            prefix = log_prefix(kind, sandbox, uncounted=True)
            for only in (f"{_ICMP_ANY} ", ""):
                self.add(f'{match}{only}{uncounted}{rate} log prefix "{prefix}" group {s.nflog_group}', 2)
                self.add(f"{match}{only}{uncounted}{verdict}", 2)
            # ICMP has a log budget of its own: a flood of other protocols must not starve the ICMP tunnel detector.
            self._metered_log(f"{match}{_ICMP_ANY} ", log, limit, families)
            self.add(f"{match}{_ICMP_ANY} {verdict}", 2)
            self._metered_log(match, log, limit, families)
        else:
            self.add(f"{match}{limit} {log}", 2)
        self.add(f"{match}{verdict}", 2)

    def _metered_log(self, match: str, log: str, limit: str, families: list[tuple[int, str]]) -> None:
        """Log under the packet's own key's meter (and the rule's ceiling); a key the full meter set could not take
        is logged under the rule's plain limit instead, so a full set hides nothing that used to be logged."""
        s = self.settings
        meter = f"limit rate {s.key_log_rate}/second burst {s.key_log_burst} packets"
        ceiling = f"limit rate {s.log_ceiling}/second burst {2 * s.log_ceiling} packets"
        for v, fam in families:
            self.add(f"{match}update @{log_meter_set(v)} {{ {_key(fam)} {meter} }} {ceiling} {log}", 2)
        for v, fam in families:
            self.add(f"{match}{_key(fam)} != @{log_meter_set(v)} {limit} {log}", 2)

    def open_table(self, header: str) -> None:
        t = self.settings.table
        self.add(f"# {header}")
        self.add(f"# Generated by egress.nft.render: edit the policy, not this file. Touches table inet {t} only.")
        self.add(f"table inet {t} {{}}")
        self.add(f"delete table inet {t}")
        self.add(f"table inet {t} {{")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _set(out: _Script, name: str, kind: str, flags: str, elements: list[str], extra: str = "") -> None:
    body = f"type {kind}; flags {flags};{extra}"
    if elements:
        body += " elements = { " + ", ".join(elements) + " };"
    out.add(f"set {name} {{ {body} }}", 1)


def _check_ids(sandboxes: tuple[Sandbox, ...]) -> None:
    seen: dict[str, str] = {}
    for sandbox in sandboxes:
        key = set_id(sandbox.name)
        if key in seen:
            raise ValueError(f"sandboxes {seen[key]!r} and {sandbox.name!r} map to the same nftables name {key!r}")
        seen[key] = sandbox.name


def render(policy: Policy, settings: GatewaySettings, quarantined: Iterable[str] = ()) -> str:
    """The complete ruleset for ``policy`` as an ``nft -f`` script; ``quarantined``: names of sandboxes cut off."""
    _check_ids(policy.sandboxes)
    ifs = interfaces(policy, settings)
    on_sandbox = f"iifname {_one_of(ifs, quote=True)}"
    out = _Script(settings)
    names = ", ".join(s.name for s in policy.sandboxes) or "none"
    out.open_table(f"egress ruleset for {policy.file} (sandboxes: {names})")
    _sets(out, policy.sandboxes)
    _quarantine_sets(out, _quarantined_sources(policy, quarantined))
    _prerouting(out, policy.sandboxes, on_sandbox)
    _limits(out, policy.sandboxes, on_sandbox)
    _nat_prerouting(out, policy.sandboxes, on_sandbox)
    _input(out, policy.sandboxes, on_sandbox)
    _forward(out, policy.sandboxes, ifs, on_sandbox)
    _output(out)
    if settings.masquerade:
        _nat_postrouting(out, policy.sandboxes)
    out.add("}")
    return out.text()


_ND: Final = "icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255"
"""IPv6 neighbour discovery as it must look (hop limit 255, RFC 4861 §6.1): let through from any sandbox."""
_MLD: Final = "ip6 saddr { ::, fe80::/10 } icmpv6 type { mld-listener-report, mld2-listener-report }"
_DHCP4_PORTS: Final = "udp sport 68 udp dport 67"
_DHCP4_UNCONFIGURED: Final = f"ip saddr 0.0.0.0 ip daddr 255.255.255.255 {_DHCP4_PORTS}"
"""A DHCPDISCOVER (or a REQUEST before the client has its address): the only packet 0.0.0.0 may send (RFC 2131
§4.1)."""
_DHCP6: Final = "ip6 saddr fe80::/10 ip6 daddr ff02::1:2 udp sport 546 udp dport 547"
"""A DHCPv6 client's messages to All_DHCP_Relay_Agents_and_Servers, from its link-local address (RFC 8415 §7.1)."""
_FAMILIES: Final = ((4, "ip"), (6, "ip6"))
NEVER_ON_THE_WIRE: Final = {
    4: ("0.0.0.0/8", "127.0.0.0/8"),
    6: ("::/128", "::1/128", "::ffff:0:0/96"),
}
"""Destinations no sandbox packet may have (RFC 1122 §3.2.1.3; RFC 4291 §2.5.2, §2.5.3, §2.5.5.2), all meaning
"this host" to a socket of the gateway: 0.0.0.0 (the kernel types it broadcast, so ``fib daddr type local`` misses
it) and ``::ffff:127.0.0.1`` (no address of the host) were redirected to the proxy, whose dial reached the
gateway's own loopback services (red team 10b). Dropped before conntrack, in every mode, logged as ``guard``."""
_ICMP_ANY: Final = "meta l4proto { icmp, ipv6-icmp }"


def _key(family: str) -> str:
    """The key a sandbox drop is counted and metered under: (source, IP protocol, destination)."""
    return f"{family} saddr . meta l4proto . {family} daddr"


def _sets(out: _Script, sandboxes: tuple[Sandbox, ...]) -> None:
    """Per sandbox: its source networks, and the allow sets the resolver fills (v4 and v6 of each)."""
    for sandbox in sandboxes:
        nets = {v: [str(n) for n in sandbox.sources if n.version == v] for v in (4, 6)}
        _set(out, source_set(sandbox.name, 4), "ipv4_addr", "interval", nets[4], " auto-merge;")
        _set(out, source_set(sandbox.name, 6), "ipv6_addr", "interval", nets[6], " auto-merge;")
        _set(out, allow_set(sandbox.name, 4), "ipv4_addr", "timeout", [], " counter;")
        _set(out, allow_set(sandbox.name, 6), "ipv6_addr", "timeout", [], " counter;")
        for group in udp_groups(sandbox):
            if group.set_name is not None:
                kind = "ipv4_addr" if group.version == 4 else "ipv6_addr"
                elements = [str(rule.network) for rule in group.rules]
                _set(out, group.set_name, kind, "interval", elements, " auto-merge;")
    for line in counting.set_lines():
        out.add(line, 1)
    meter = f" timeout {METER_TIMEOUT}s; size {METER_SIZE};"
    for v, kind in ((4, "ipv4_addr . inet_proto . ipv4_addr"), (6, "ipv6_addr . inet_proto . ipv6_addr")):
        _set(out, log_meter_set(v), kind, "dynamic,timeout", [], meter)
    for line, depth in counting.chain_lines():
        out.add(line, depth)
    out.add()


def _prerouting(out: _Script, sandboxes: tuple[Sandbox, ...], on_sandbox: str) -> None:
    """Anti-spoofing: a sandbox interface's packets must come from a source of a sandbox behind it."""
    # It runs before conntrack (priority raw), so spoofed packets never create state.
    out.add("chain prerouting {", 1)
    out.add("type filter hook prerouting priority raw; policy accept;", 2)
    # What a quarantined sandbox sends is counted and logged like any sandbox drop (per key, metered), so the
    # drop logger records it aggregated with exact counts (issue 12); the rest of the cut-off is only counted.
    for v, fam in _FAMILIES:
        out.log_then("drop", LogKind.QUARANTINE, match=f"{fam} saddr @{quarantine_set(v)} ", version=v)
    _foreign_sources(out, sandboxes)
    out.add(f"{on_sandbox} jump sandbox_sources", 2)
    out.add("}", 1)
    out.add("chain sandbox_sources {", 1)
    # First, whatever the source: a destination that is this host by another name is never relayed (report too).
    for v, fam in _FAMILIES:
        out.log_then("drop", LogKind.GUARD, match=f"{fam} daddr {_one_of(NEVER_ON_THE_WIRE[v])} ", version=v)
    for sandbox in sandboxes:
        iif = f'iifname "{sandbox.interface or out.settings.sandbox_if}" '
        for v, fam in _FAMILIES:
            src, allow = source_set(sandbox.name, v), allow_set(sandbox.name, v)
            # The lookup in the allow set bumps that address's counter: per-destination accounting for free.
            out.add(f"{iif}{fam} saddr @{src} {fam} daddr @{allow} return", 2)
            out.add(f"{iif}{fam} saddr @{src} return", 2)
    out.add(f"ip6 saddr fe80::/10 {_ND} return", 2)
    out.add("ip6 saddr :: icmpv6 type nd-neighbor-solicit ip6 hoplimit 255 return", 2)
    out.add(f"{_MLD} return", 2)
    if out.settings.dhcp:
        out.add(f"{_DHCP4_UNCONFIGURED} return", 2)
        out.add(f"{_DHCP6} return", 2)
    out.log_then("drop", LogKind.SPOOF)
    out.add("}", 1)
    out.add()


def _foreign_sources(out: _Script, sandboxes: tuple[Sandbox, ...]) -> None:
    """A sandbox's source arriving on any other interface (the uplink: an outsider forging it, red team 10b) is
    dropped and logged as spoofed, naming no sandbox (the outsider must not fill the sandbox's records). IPv6 has
    no ``rp_filter``, and the IPv4 one is a sysctl the table cannot count on."""
    for sandbox in sandboxes:
        # Loopback is exempt: the gateway's own packets to itself (its address may fall in a sandbox's networks).
        iif = f'iifname != {{ "lo", "{sandbox.interface or out.settings.sandbox_if}" }} '
        for v, fam in _FAMILIES:
            out.log_then("drop", LogKind.SPOOF, match=f"{iif}{fam} saddr @{source_set(sandbox.name, v)} ", version=v)


def _limits(out: _Script, sandboxes: tuple[Sandbox, ...], on_sandbox: str) -> None:
    """Each sandbox's bound on the TCP connections it holds at once (``max_connections``), all its sources together.

    TCP only: every new TCP connection takes a place in a proxy worker, which is what a flood exhausts; DNS has the
    resolver's own limits and forwarded UDP waits in no worker (counting them would let a build's burst of DNS
    queries, each a conntrack entry for 30 s or more, take the bound).

    One ``ct count`` per sandbox, in a chain of its own that both families jump to, so v4 and v6 share it; it runs
    after conntrack (priority mangle) and before the redirect to the proxy, on a connection's first packet only.
    A new connection over the bound is counted, logged (``egress limit <sandbox>``) and dropped: the agent's flood
    of idle connections waits in no proxy worker, and another sandbox's connections are counted apart."""
    out.add("chain limits {", 1)
    out.add("type filter hook prerouting priority mangle; policy accept;", 2)
    out.add(f"{on_sandbox} meta l4proto tcp ct state new jump sandbox_limits", 2)
    out.add("}", 1)
    out.add("chain sandbox_limits {", 1)
    for sandbox in sandboxes:
        for v, fam in _FAMILIES:
            out.add(f"{fam} saddr @{source_set(sandbox.name, v)} jump limit_{set_id(sandbox.name)}", 2)
    out.add("}", 1)
    for sandbox in sandboxes:
        out.add(f"chain limit_{set_id(sandbox.name)} {{", 1)
        # `ct count N` matches while the sandbox holds N or fewer (this one included): evaluated once per packet.
        out.add(f"ct count {sandbox.max_connections} return", 2)
        out.log_then("drop", LogKind.LIMIT, sandbox.name)
        out.add("}", 1)
    out.add()


def _nat_prerouting(out: _Script, sandboxes: tuple[Sandbox, ...], on_sandbox: str) -> None:
    """DNS to the gateway's resolver, every other new TCP connection to a proxy worker (round-robin).

    With more than one resolver process each sandbox's DNS, UDP and TCP, goes to its own process's port
    (`egress.policy.partition`: always the same process, so its tunnel tracker sees every query), in the policy's
    order; what no sandbox's sources hold (anti-spoofing dropped it already) goes to process 0, as before."""
    settings = out.settings
    out.add("chain nat_prerouting {", 1)
    out.add("type nat hook prerouting priority dstnat; policy accept;", 2)
    ports = settings.dns_ports
    if len(ports) > 1:
        for sandbox in sandboxes:
            port = ports[process_of(sandbox.name, len(ports))]
            for v, fam in _FAMILIES:
                sources = f"{fam} saddr @{source_set(sandbox.name, v)}"
                out.add(f"{on_sandbox} {sources} meta l4proto {{ tcp, udp }} th dport 53 redirect to :{port}", 2)
    out.add(f"{on_sandbox} meta l4proto {{ tcp, udp }} th dport 53 redirect to :{settings.dns_port}", 2)
    # Never proxy connections to the gateway itself: the proxy would reach the API, Redis or SSH for the sandbox.
    out.add(f"{on_sandbox} fib daddr type local return", 2)
    ports = settings.proxy_ports
    if len(ports) == 1:
        target = f":{ports[0]}"
    else:
        target = f":numgen inc mod {len(ports)} map {{ " + ", ".join(f"{i} : {p}" for i, p in enumerate(ports)) + " }"
    out.add(f"{on_sandbox} meta l4proto tcp redirect to {target}", 2)
    out.add("}", 1)
    out.add()


def _input(out: _Script, sandboxes: tuple[Sandbox, ...], on_sandbox: str) -> None:
    """What a sandbox may send to the gateway itself: its redirected connections and the ICMP a network needs.

    An ICMP error is let in only about a connection the sandbox itself opened to the gateway (its DNS, its proxied
    connections: ``ct original`` saddr one of its sources), as `_related` judges a forwarded one. Any other error
    was accepted unconditioned until red team 11: a fragmentation needed (or IPv6 packet too big) quoting an echo
    reply from the gateway's uplink to allowed.lab set the gateway's path MTU to that host to 552 (1,280) bytes
    for 10 minutes, for every sandbox, unrecorded (the kernel's ``icmp_err``/``icmpv6_err`` trust such a quote
    without a socket); conntrack also calls related an error quoting the proxy's own upstream connections. The
    error must also come from that sandbox's sources: until red team 11's last row, sandbox A could send one quoting
    sandbox B's DNS and set the gateway's path MTU to B."""
    settings = out.settings
    out.add("chain input {", 1)
    out.add("type filter hook input priority filter; policy accept;", 2)
    out.add(f"{on_sandbox} jump sandbox_input", 2)
    out.add("}", 1)
    out.add("chain sandbox_input {", 1)
    out.add("ct state established accept", 2)
    for sandbox in sandboxes:
        for v, fam in _FAMILIES:
            # From the sandbox whose connection it quotes: from another, a sandbox could cut a neighbour's path MTU
            # to the gateway (red team 11's open row); a source forged from another link is dropped before this.
            out.add(f"{fam} saddr @{source_set(sandbox.name, v)} {_related(sandbox, v)} accept", 2)
    # Only redirected connections: a direct connection to a proxy port would make the proxy connect to itself.
    out.add(f"ct status dnat meta l4proto tcp th dport {_one_of(settings.proxy_ports)} accept", 2)
    out.add(f"ct status dnat meta l4proto {{ tcp, udp }} th dport {_one_of(settings.dns_ports)} accept", 2)
    out.add(f"{_ND} accept", 2)
    out.add(f"{_MLD} accept", 2)
    if settings.dhcp:
        # From an unconfigured client (broadcast, 0.0.0.0) or a leased one renewing (unicast, a sandbox source)
        out.add(f'meta nfproto ipv4 {_DHCP4_PORTS} accept comment "dhcp"', 2)
        out.add(f'{_DHCP6} accept comment "dhcpv6"', 2)
    out.log_then("drop", LogKind.GUARD)
    out.add("}", 1)
    out.add()


def _forward(out: _Script, sandboxes: tuple[Sandbox, ...], ifs: tuple[str, ...], on_sandbox: str) -> None:
    """Forwarded traffic: from a sandbox through its own chain, towards a sandbox only as a reply.

    Only TCP is accepted as ``established`` without a look (none is forwarded from a sandbox: the proxy takes it,
    so this is the path of nothing, kept as it was). UDP and every other connectionless protocol of an enforcing
    sandbox is judged packet by packet against the policy's rules, both ways: a flow the kernel's conntrack keeps
    alive stops the moment an applied policy no longer allows it (one transaction, no conntrack entry to delete
    and no window between the table and the entries). A report-mode sandbox keeps its flows (it blocks nothing)."""
    out.add(f"chain {UDP_GATE_CHAIN} {{", 1)  # filled by the gateway with its queue rule (egress.nft.xtqueue)
    out.add("}", 1)
    out.add("chain forward {", 1)
    # Drop by default, whatever the interface: the sandbox interfaces choose what is inspected, not what is
    # protected, so a gateway run with a wrong interface name forwards nothing rather than everything.
    out.add("type filter hook forward priority filter; policy drop;", 2)
    _cut_off(out, "saddr")
    _cut_off(out, "daddr")  # replies to a quarantined sandbox, after the masquerade is undone
    out.add(f"{on_sandbox} jump sandbox_forward", 2)
    out.add(f"oifname {_one_of(ifs, quote=True)} jump to_sandbox", 2)
    out.add('counter comment "neither from nor to a sandbox interface: never forwarded"', 2)
    out.add("}", 1)
    out.add("chain sandbox_forward {", 1)
    # No blanket `ct state related accept`: conntrack calls related an ICMP error quoting any connection it tracks,
    # the proxy's and the resolver's own upstream ones included (red team 2). A sandbox's related errors are judged
    # in its own chain (`_related`): only those quoting its own forwarded flows pass; the rest is logged and dropped.
    out.add("meta l4proto tcp ct state established accept", 2)
    for sandbox in sandboxes:
        for v, fam in _FAMILIES:
            out.add(f"{fam} saddr @{source_set(sandbox.name, v)} jump forward_{set_id(sandbox.name)}", 2)
    out.log_then("drop", LogKind.DROP)
    out.add("}", 1)
    for sandbox in sandboxes:
        _sandbox_forward(out, sandbox)
    out.add("chain to_sandbox {", 1)
    out.add("meta l4proto tcp ct state established accept", 2)
    for sandbox in sandboxes:
        for v, fam in _FAMILIES:
            to = f"{fam} daddr @{source_set(sandbox.name, v)}"
            out.add(f"{to} {_related(sandbox, v)} accept", 2)
            if sandbox.mode is Mode.REPORT:
                out.add(f"{to} ct state established accept", 2)
            else:
                out.add(f"{to} jump back_{set_id(sandbox.name)}", 2)
    out.log_then("drop", LogKind.INBOUND)
    out.add("}", 1)
    for sandbox in sandboxes:
        if sandbox.mode is not Mode.REPORT:
            out.add(f"chain back_{set_id(sandbox.name)} {{", 1)
            for group in udp_groups(sandbox):
                for line in udp_lines(group, reply=True):
                    out.add(line, 2)
            out.add("}", 1)


def _sandbox_forward(out: _Script, sandbox: Sandbox) -> None:
    """One sandbox's forward chain: its allowed UDP networks, then drop (or, in report mode, log and accept)."""
    out.add(f"chain forward_{set_id(sandbox.name)} {{", 1)
    for v, _ in _FAMILIES:
        out.add(f"{_related(sandbox, v, _QUOTE_ONLY)} accept", 2)
    for group in udp_groups(sandbox):
        for line in udp_lines(group, reply=False):
            out.add(line, 2)
    if sandbox.mode is Mode.REPORT:
        out.add("ct state established accept", 2)  # logged once, when it began (report mode blocks nothing)
        out.log_then("accept", LogKind.REPORT, sandbox.name)
    else:
        out.log_then("drop", LogKind.DROP, sandbox.name)
    out.add("}", 1)


_ICMP_ERRORS: Final = {
    4: "icmp type { destination-unreachable, time-exceeded, parameter-problem } ip length <= 576",
    6: "icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem } ip6 length <= 1240",
}
"""The ICMP errors a forwarded flow may need (PMTU, port unreachable...), no longer than an error ever is: IPv4
errors fit in 576 bytes (RFC 1812 §4.3.2.3), IPv6 ones in the minimum MTU, 1280 (RFC 4443 §2.4 c; ``ip6 length``
is the payload's)."""
_QUOTE_ONLY: Final = {4: "ip hdrlength 5 ip length <= 56", 6: "ip6 length <= 56"}
"""The size of an error a sandbox sends through the gateway: its headers and the quoted packet's IP and UDP headers
(IPv4: 20 + 8 + 20 + 8 bytes, no options; IPv6: 8 + 40 + 8 bytes of payload), nothing of the quoted payload. The
flows a sandbox has through the gateway are its allowed UDP, whose datagrams the UDP gate reads; an error about one
of them went past the gate (it queues UDP only) with up to 520 (1,184) bytes of a quoted "reply" the sandbox
wrote: red team 12 sent Stratum's subscribe to an allowed UDP network's host that way, unrecorded. The peer learns
what an error says from the headers; a longer one (the sandbox kernel's own, quoting a whole reply) is dropped and
recorded."""


def _related(sandbox: Sandbox, version: int, size: dict[int, str] | None = None) -> str:
    """The match for an ICMP error about one of ``sandbox``'s own forwarded flows: conntrack calls it related, the
    flow it quotes was opened from the sandbox's sources (``ct original`` is the quoted connection's original
    direction, before NAT), and it has an error's type and size (``size``: a tighter bound than an error's). An
    error quoting the gateway's own connections (the proxy's, the resolver's upstream ones) matches nothing here:
    dropped and logged as the sandbox's drop."""
    fam = "ip" if version == 4 else "ip6"
    match = _ICMP_ERRORS[version] if size is None else _ICMP_ERRORS[version].rsplit(f" {fam} length", 1)[0]
    bound = "" if size is None else f" {size[version]}"
    return f"ct state related ct original {fam} saddr @{source_set(sandbox.name, version)} {match}{bound}"


def _quarantined_sources(policy: Policy, quarantined: Iterable[str]) -> dict[int, list[str]]:
    """The source networks of the quarantined sandboxes the policy has, per IP version (a name the policy no
    longer has cuts nothing off)."""
    names = set(quarantined)
    nets = [net for sandbox in policy.sandboxes if sandbox.name in names for net in sandbox.sources]
    return {v: [str(net) for net in nets if net.version == v] for v in (4, 6)}


def _quarantine_sets(out: _Script, sources: dict[int, list[str]]) -> None:
    _set(out, quarantine_set(4), "ipv4_addr", "interval", sources[4], " auto-merge;")
    _set(out, quarantine_set(6), "ipv6_addr", "interval", sources[6], " auto-merge;")
    out.add()


def _cut_off(out: _Script, field: str) -> None:
    """Drop what a quarantined sandbox sends (``saddr``) or is sent (``daddr``), before any state is consulted: an
    ``established`` accept further on must not let a connection opened before the quarantine go on."""
    for v, fam in _FAMILIES:
        out.add(f'{fam} {field} @{quarantine_set(v)} counter drop comment "quarantined"', 2)


def _output(out: _Script) -> None:
    """What the gateway itself sends (its proxy workers' and resolver's replies) to a quarantined sandbox."""
    out.add()
    out.add("chain output {", 1)
    out.add("type filter hook output priority filter; policy accept;", 2)
    _cut_off(out, "daddr")
    out.add("}", 1)


def render_quarantine(policy: Policy, settings: GatewaySettings, quarantined: Iterable[str]) -> str:
    """One transaction that makes the quarantine sets hold exactly the sources of ``quarantined`` (in force at
    once, for packets of established connections too); for a table `render` made."""
    t = settings.table
    sources = _quarantined_sources(policy, quarantined)
    lines = []
    for v in (4, 6):
        lines.append(f"flush set inet {t} {quarantine_set(v)}")
        if sources[v]:
            lines.append(f"add element inet {t} {quarantine_set(v)} {{ {', '.join(sources[v])} }}")
    return "\n".join(lines) + "\n"


def _nat_postrouting(out: _Script, sandboxes: tuple[Sandbox, ...]) -> None:
    """Masquerade forwarded sandbox traffic on the uplink."""
    out.add()
    out.add("chain nat_postrouting {", 1)
    out.add("type nat hook postrouting priority srcnat; policy accept;", 2)
    for sandbox in sandboxes:
        for v, fam in _FAMILIES:
            out.add(f'oifname "{out.settings.uplink_if}" {fam} saddr @{source_set(sandbox.name, v)} masquerade', 2)
    out.add("}", 1)


def render_lockdown(settings: GatewaySettings, policy: Policy | None = None) -> str:
    """Fail closed: our table, dropping everything from and to the sandbox interfaces (logged as LOCKDOWN).

    ``policy`` only adds the sandboxes' own interfaces to ``settings.sandbox_if``.
    """
    ifs = _one_of(interfaces(policy, settings), quote=True)
    out = _Script(settings)
    out.open_table("egress lockdown: a gateway component is down, no sandbox traffic passes")
    out.add("chain prerouting {", 1)
    out.add("type filter hook prerouting priority raw; policy accept;", 2)
    out.log_then("drop", LogKind.LOCKDOWN, match=f"iifname {ifs} ")
    out.add("}", 1)
    out.add("chain forward {", 1)
    out.add("type filter hook forward priority filter; policy drop;", 2)  # nothing, on any interface
    out.add("}", 1)
    out.add("chain output {", 1)
    out.add("type filter hook output priority filter; policy accept;", 2)
    out.add(f"oifname {ifs} drop", 2)
    out.add("}", 1)
    out.add("}")
    return out.text()
