"""Policy + gateway settings → one ``nft -f`` script for the gateway's own table (pure, no IO).

The script first deletes only our table (``table inet egress {}`` then ``delete table inet egress``, so it works
whether or not the table exists) and never flushes anything else; `egress.nft.runner.apply` loads it as one
transaction. docs/nftables.md explains the shape; the log prefixes below are the contract with the nflog reader.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass

from egress.policy.model import Mode, NetworkRule, Policy, Sandbox

_IFNAME = re.compile(r"[A-Za-z0-9_.@:-]{1,15}")
_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_COMMENT_UNSAFE = re.compile(r'["\\\x00-\x1f]')
MAX_NAME = 100
"""Longest sandbox name: the kernel cuts log prefixes at 127 bytes (``egress report <name>``)."""


class LogKind(enum.StrEnum):
    """Why nftables logged a packet: the second word of every log prefix (``egress <kind> [sandbox]``)."""

    SPOOF = "spoof"
    """A source address on a sandbox interface that belongs to no sandbox behind it (dropped)."""
    GUARD = "guard"
    """Sandbox traffic to the gateway itself that is neither redirected proxy/DNS traffic nor needed ICMP."""
    DROP = "drop"
    """Sandbox traffic the gateway would have to forward (UDP, ICMP...) that no rule allows (dropped)."""
    REPORT = "report"
    """Like DROP, for a sandbox in report mode: the packet was let through."""
    INBOUND = "inbound"
    """Traffic towards a sandbox that is not a reply (dropped)."""
    LOCKDOWN = "lockdown"
    """Anything from a sandbox interface while the gateway is locked down (a component died)."""


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
    nflog_group: int = 7
    """The nflog group every logged drop goes to."""
    table: str = "egress"
    """Our table (family inet); the only one the script touches."""
    log_rate: int = 50
    """Logged packets per second per rule, so a flood cannot flood the logger (drops themselves are not limited)."""
    log_burst: int = 100
    masquerade: bool = True
    """Masquerade forwarded sandbox traffic (allowed UDP networks, report mode) on ``uplink_if``."""

    def __post_init__(self) -> None:
        for name in (self.sandbox_if, self.uplink_if):
            if not _IFNAME.fullmatch(name):
                raise ValueError(f"bad interface name {name!r}")
        if not _IDENT.fullmatch(self.table):
            raise ValueError(f"bad table name {self.table!r}")
        ports = (*self.proxy_ports, self.dns_port)
        if not self.proxy_ports or len(set(ports)) != len(ports) or not all(0 < p < 65536 for p in ports):
            raise ValueError(f"proxy ports {self.proxy_ports} and DNS port {self.dns_port} must be distinct ports")
        if not 0 <= self.nflog_group < 65536:
            raise ValueError(f"bad nflog group {self.nflog_group}")
        if self.log_rate < 1 or self.log_burst < 1:
            raise ValueError("log_rate and log_burst must be positive")


def set_id(sandbox_name: str) -> str:
    """The sandbox's name as it appears in set names, chain names and log prefixes."""
    safe = _NAME_UNSAFE.sub("_", sandbox_name)
    if not safe or len(safe) > MAX_NAME:
        raise ValueError(f"sandbox name {sandbox_name!r} must have 1 to {MAX_NAME} characters for nftables")
    return safe


def source_set(sandbox_name: str, version: int) -> str:
    """The named set of the sandbox's source networks (``version`` 4 or 6)."""
    return f"src{version}_{set_id(sandbox_name)}"


def allow_set(sandbox_name: str, version: int) -> str:
    """The dynamic set (with timeouts) the resolver fills with the addresses it answered to this sandbox."""
    return f"allow{version}_{set_id(sandbox_name)}"


def log_prefix(kind: LogKind, sandbox_name: str | None = None) -> str:
    return f"egress {kind}" if sandbox_name is None else f"egress {kind} {set_id(sandbox_name)}"


def parse_prefix(prefix: str) -> tuple[LogKind, str | None] | None:
    """``"egress drop agents"`` → ``(LogKind.DROP, "agents")``; ``None`` for a prefix that is not ours.

    The sandbox part is `set_id` of the name; `Policy.sandbox_for` on the packet's source is the sure way back.
    """
    words = prefix.split(" ")
    if len(words) not in (2, 3) or words[0] != "egress":
        return None
    try:
        kind = LogKind(words[1])
    except ValueError:
        return None
    return kind, (words[2] if len(words) == 3 else None)


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

    def log_then(self, verdict: str, kind: LogKind, sandbox: str | None = None, match: str = "") -> None:
        s = self.settings
        limit = f"limit rate {s.log_rate}/second burst {s.log_burst} packets"
        self.add(f'{match}{limit} log prefix "{log_prefix(kind, sandbox)}" group {s.nflog_group}', 2)
        self.add(f"{match}{verdict}", 2)

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


def _udp_rule(rule: NetworkRule) -> str | None:
    """The forward rule for one allowed network, or None when it allows no UDP (TCP always goes to the proxy)."""
    if "udp" not in rule.protocols:
        return None
    family = "ip" if rule.network.version == 4 else "ip6"
    ports = f"udp dport {_one_of(sorted(rule.ports))}" if rule.ports else "meta l4proto udp"
    comment = _COMMENT_UNSAFE.sub("_", rule.rule_id)[:127]  # the kernel keeps at most 128 bytes with the NUL
    return f'{family} daddr {rule.network} {ports} accept comment "{comment}"'


def _check_ids(sandboxes: tuple[Sandbox, ...]) -> None:
    seen: dict[str, str] = {}
    for sandbox in sandboxes:
        key = set_id(sandbox.name)
        if key in seen:
            raise ValueError(f"sandboxes {seen[key]!r} and {sandbox.name!r} map to the same nftables name {key!r}")
        seen[key] = sandbox.name


def render(policy: Policy, settings: GatewaySettings) -> str:
    """The complete ruleset for ``policy`` as an ``nft -f`` script."""
    _check_ids(policy.sandboxes)
    ifs = interfaces(policy, settings)
    on_sandbox = f"iifname {_one_of(ifs, quote=True)}"
    out = _Script(settings)
    names = ", ".join(s.name for s in policy.sandboxes) or "none"
    out.open_table(f"egress ruleset for {policy.file} (sandboxes: {names})")

    for sandbox in policy.sandboxes:
        nets = {v: [str(n) for n in sandbox.sources if n.version == v] for v in (4, 6)}
        _set(out, source_set(sandbox.name, 4), "ipv4_addr", "interval", nets[4], " auto-merge;")
        _set(out, source_set(sandbox.name, 6), "ipv6_addr", "interval", nets[6], " auto-merge;")
        _set(out, allow_set(sandbox.name, 4), "ipv4_addr", "timeout", [], " counter;")
        _set(out, allow_set(sandbox.name, 6), "ipv6_addr", "timeout", [], " counter;")
    out.add()

    # Anti-spoofing runs before conntrack (priority raw), so spoofed packets never create state.
    out.add("chain prerouting {", 1)
    out.add("type filter hook prerouting priority raw; policy accept;", 2)
    out.add(f"{on_sandbox} jump sandbox_sources", 2)
    out.add("}", 1)
    out.add("chain sandbox_sources {", 1)
    for sandbox in policy.sandboxes:
        iif = f'iifname "{sandbox.interface or settings.sandbox_if}" '
        for v, fam in ((4, "ip"), (6, "ip6")):
            src, allow = source_set(sandbox.name, v), allow_set(sandbox.name, v)
            # The lookup in the allow set bumps that address's counter: per-destination accounting for free.
            out.add(f"{iif}{fam} saddr @{src} {fam} daddr @{allow} return", 2)
            out.add(f"{iif}{fam} saddr @{src} return", 2)
    nd = "icmpv6 type { nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } ip6 hoplimit 255"
    out.add(f"ip6 saddr fe80::/10 {nd} return", 2)
    out.add("ip6 saddr :: icmpv6 type nd-neighbor-solicit ip6 hoplimit 255 return", 2)
    out.add("ip6 saddr { ::, fe80::/10 } icmpv6 type { mld-listener-report, mld2-listener-report } return", 2)
    out.log_then("drop", LogKind.SPOOF)
    out.add("}", 1)
    out.add()

    out.add("chain nat_prerouting {", 1)
    out.add("type nat hook prerouting priority dstnat; policy accept;", 2)
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

    out.add("chain input {", 1)
    out.add("type filter hook input priority filter; policy accept;", 2)
    out.add(f"{on_sandbox} jump sandbox_input", 2)
    out.add("}", 1)
    out.add("chain sandbox_input {", 1)
    out.add("ct state established,related accept", 2)
    # Only redirected connections: a direct connection to a proxy port would make the proxy connect to itself.
    out.add(f"ct status dnat meta l4proto tcp th dport {_one_of(ports)} accept", 2)
    out.add(f"ct status dnat meta l4proto {{ tcp, udp }} th dport {settings.dns_port} accept", 2)
    out.add("icmp type { destination-unreachable, time-exceeded, parameter-problem } accept", 2)
    out.add("icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem } accept", 2)
    out.add(f"{nd} accept", 2)
    out.add("ip6 saddr { ::, fe80::/10 } icmpv6 type { mld-listener-report, mld2-listener-report } accept", 2)
    out.log_then("drop", LogKind.GUARD)
    out.add("}", 1)
    out.add()

    out.add("chain forward {", 1)
    out.add("type filter hook forward priority filter; policy accept;", 2)
    out.add(f"{on_sandbox} jump sandbox_forward", 2)
    out.add(f"oifname {_one_of(ifs, quote=True)} jump to_sandbox", 2)
    out.add("}", 1)
    out.add("chain sandbox_forward {", 1)
    out.add("ct state established,related accept", 2)
    for sandbox in policy.sandboxes:
        for v, fam in ((4, "ip"), (6, "ip6")):
            out.add(f"{fam} saddr @{source_set(sandbox.name, v)} jump forward_{set_id(sandbox.name)}", 2)
    out.log_then("drop", LogKind.DROP)
    out.add("}", 1)
    for sandbox in policy.sandboxes:
        out.add(f"chain forward_{set_id(sandbox.name)} {{", 1)
        for rule in sandbox.networks:
            line = _udp_rule(rule)
            if line:
                out.add(line, 2)
        if sandbox.mode is Mode.REPORT:
            out.log_then("accept", LogKind.REPORT, sandbox.name)
        else:
            out.log_then("drop", LogKind.DROP, sandbox.name)
        out.add("}", 1)
    out.add("chain to_sandbox {", 1)
    out.add("ct state established,related accept", 2)
    out.log_then("drop", LogKind.INBOUND)
    out.add("}", 1)

    if settings.masquerade:
        out.add()
        out.add("chain nat_postrouting {", 1)
        out.add("type nat hook postrouting priority srcnat; policy accept;", 2)
        for sandbox in policy.sandboxes:
            for v, fam in ((4, "ip"), (6, "ip6")):
                out.add(f'oifname "{settings.uplink_if}" {fam} saddr @{source_set(sandbox.name, v)} masquerade', 2)
        out.add("}", 1)
    out.add("}")
    return out.text()


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
    out.add("type filter hook forward priority filter; policy accept;", 2)
    out.add(f"oifname {ifs} drop", 2)
    out.add("}", 1)
    out.add("chain output {", 1)
    out.add("type filter hook output priority filter; policy accept;", 2)
    out.add(f"oifname {ifs} drop", 2)
    out.add("}", 1)
    out.add("}")
    return out.text()
