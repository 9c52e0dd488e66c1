"""The decision: pure functions from (sandbox policy, what was seen) to a `Verdict`. No I/O, no state.

Every enforcement point asks here: the proxy (`decide_tls`, `decide_http`, `decide_fronting`, `decide_raw`,
`decide_finding`), the resolver (`decide_dns`), the drop logger (`decide_drop`), and all of them for a source that
belongs to no sandbox (`decide_unknown_source`). A verdict is data: the action, a `Reason` from a closed set, the
rule that decided (a ``rule_id`` from the policy file or one of the fixed labels below) and short evidence.

A sandbox in report mode gets ``would-block`` wherever enforce would ``block``: the traffic passes, the record
says why it would not have. A detector set to ``record`` gives ``record``: the traffic passes and is recorded.
Verdicts whose action is not ``allow`` are the ones worth a record.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from egress.detect import miningshape, tlsshape
from egress.detect.base import EVIDENCE_MAX, Category, Finding, evidence
from egress.policy.model import Address, DetectorAction, Expect, HostRule, Mode, NetworkRule, Sandbox, TlsNames


class Reason(enum.StrEnum):
    """Why a flow, query or packet was (or would have been) blocked or recorded. Values are part of the API."""

    NOT_ALLOWLISTED = "not-allowlisted"
    """The name (or the name on this port), or the address, is allowed by no rule."""
    TLS_NO_SNI = "tls-no-sni"
    """A TLS ClientHello without a server name, to an address no network rule allows."""
    NAME_ADDRESS_MISMATCH = "name-address-mismatch"
    """SNI/Host names an allowed host, but the destination did not come from the gateway resolver's answer for
    that name: spoofed SNI or Host, domain fronting at the address level, a hard-coded IP."""
    DIRECT_IP = "direct-ip"
    """No name at all (raw TCP/UDP, HTTP without Host, an IP as Host or SNI) and no network rule for the address."""
    MINING = "mining"
    TUNNEL = "tunnel"
    CRYPTO_NODE = "crypto-node"
    DNS_REFUSED = "dns-refused"
    """A DNS question for a name no rule allows (answered REFUSED)."""
    DNS_TUNNEL = "dns-tunnel"
    """DNS tunnelling or exfiltration: the tunnel tracker's finding, or a name longer than ``dns.max_name_length``."""
    DOH_CANARY = "doh-canary"
    """The DoH canary ``use-application-dns.net`` (answered NXDOMAIN so browsers keep DNS on the gateway)."""
    SPOOFED_SOURCE = "spoofed-source"
    """The source address belongs to no sandbox."""
    FIREWALL_DROP = "firewall-drop"
    """Dropped by nftables: UDP other than DNS (QUIC included), ICMP beyond what is needed, other protocols."""
    CONNECTION_LIMIT = "connection-limit"
    """A new connection dropped by nftables because its sandbox already held ``max_connections`` at once."""
    DOMAIN_FRONTING = "domain-fronting"
    """Inside intercepted TLS, the HTTP Host differs from the SNI that was allowed."""
    DNS_MALFORMED = "dns-malformed"
    """A DNS query the resolver will not forward whatever its name: not exactly one question, a non-zero opcode,
    a class other than IN, a name that is no hostname (``allowed.lab:x.evil``, ``[allowed.lab]``, escapes)."""
    DNS_ANSWER = "dns-answer"
    """An upstream answer refused or cut: an address outside the rule's ``answers``, in ``dns.deny_ranges``, not
    global (rebinding) and in no ``dns.allow_ranges``, or a CNAME to a listed name."""
    DNS_DROPPED = "dns-dropped"
    """A query the kernel dropped before the resolver read it (receive buffer full); the record's count says how
    many (the source is unknown: the kernel counts, it does not say whose)."""
    IDLE_LIMIT = "idle-limit"
    """A connection that had not sent a byte, closed by a proxy worker's bound of such connections (per sandbox
    and in all, `egress.proxy.idle`): the oldest idle one goes first. One record per sandbox a second at most,
    its evidence counting the connections closed since the last."""
    IDLE_TIMEOUT = "idle-timeout"
    """A connection that made no progress for its timeout, closed by the gateway: inside a proxy worker's mitmproxy
    (no byte forwarded either way, no byte from the server, under a minimum of client bytes; `egress.proxy.mitm.quiet`),
    on the front's plain-HTTP fast path (no next request; `egress.proxy.httpfast`), or a resolver TCP connection whose
    client read none of its answers (`egress.dnsserver.tcpserve`, rule ``dns-tcp-stalled``)."""


class Enforcement(enum.StrEnum):
    """What happens to the traffic. Values are part of the API: the `action` field of records (not an agent's
    action, which is `egress.record.actions.ActionRecord`)."""

    ALLOW = "allow"
    BLOCK = "block"
    WOULD_BLOCK = "would-block"
    """Report mode: enforce would have blocked it; it passed."""
    RECORD = "record"
    """A detector set to ``record`` recognised it, or a network rule with ``tls: any`` let TLS without a bound
    SNI through: it passed, and is recorded."""


DEFAULT_DENY: Final = "default-deny"
"""The rule label when nothing in the policy allowed it."""
ANTI_SPOOFING: Final = "anti-spoofing"
"""The rule label for sources outside every sandbox."""
DOH_CANARY_RULE: Final = "doh-canary"
IDLE_LIMIT_RULE: Final = "idle-limit"
"""The rule of `Reason.IDLE_LIMIT`'s records (the worker's bound, no policy rule)."""
IDLE_TIMEOUT_RULE: Final = "idle-timeout"
"""The rule of `Reason.IDLE_TIMEOUT`'s records (the worker's timeout, no policy rule)."""
"""The built-in rule that answers the DoH canary."""
DOH_CANARY: Final = "use-application-dns.net"
DNS_QUERY_FORM: Final = "dns-query-form"
"""The built-in rule that the resolver forwards only one standard question for a hostname."""
DNS_RECEIVE_BUFFER: Final = "dns-receive-buffer"
"""The rule label of queries the kernel dropped at the resolver's socket."""
_HOSTNAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")

_CATEGORY_REASON: Final = {Category.MINING: Reason.MINING, Category.TUNNEL: Reason.TUNNEL,
                           Category.CRYPTO_NODE: Reason.CRYPTO_NODE}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Enforcement
    reason: Reason | None
    """``None`` exactly when the action is ``allow`` and nothing is worth recording."""
    rule: str
    """The ``rule_id`` that decided (``sandboxes.agents.allow.hosts[2]``) or a fixed label (`DEFAULT_DENY`...)."""
    evidence: str
    finding: Finding | None = None

    @property
    def passes(self) -> bool:
        """Whether the traffic goes through (everything but ``block``)."""
        return self.action is not Enforcement.BLOCK

    @property
    def recorded(self) -> bool:
        """Whether this verdict is worth a record (everything but ``allow``)."""
        return self.action is not Enforcement.ALLOW


def _evidence(text: str) -> str:
    """`evidence` of ``text``, which is ``text`` itself when it is already short, printable ASCII with single
    spaces (every verdict of every connection has one: the common case costs no walk over its characters)."""
    printable = len(text) <= EVIDENCE_MAX and text.isascii() and text.isprintable()
    if printable and "  " not in text and text[:1] != " " and text[-1:] != " ":
        return text
    return evidence(text)


def _allow(rule: str, text: str, finding: Finding | None = None) -> Verdict:
    return Verdict(Enforcement.ALLOW, None, rule, _evidence(text), finding)


def _block(sandbox: Sandbox, reason: Reason, rule: str, text: str, finding: Finding | None = None) -> Verdict:
    action = Enforcement.WOULD_BLOCK if sandbox.mode is Mode.REPORT else Enforcement.BLOCK
    return Verdict(action, reason, rule, _evidence(text), finding)


def _address(value: str | Address) -> Address | None:
    return _parsed(value) if isinstance(value, str) else value


@functools.lru_cache(maxsize=4096)
def _parsed(value: str) -> Address | None:
    """An address as text → its object (cached: a gateway's connections go to few addresses; each is parsed
    several times per decision)."""
    try:
        return ipaddress.ip_address(value.split("%", 1)[0].strip("[]"))
    except ValueError:
        return None


def _name(value: str | None) -> str:
    """A name as seen on the wire (SNI, Host without port, DNS question): lowercase, no trailing dot."""
    if not value:
        return ""
    value = value.strip()
    if value.startswith("["):  # an IPv6 literal Host, with or without port
        return value[1:].partition("]")[0].lower()
    if value.count(":") == 1:  # Host: name:port
        value = value.partition(":")[0]
    return value.lower().removesuffix(".")


@functools.lru_cache(maxsize=4096)
def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _by_address(sandbox: Sandbox, dst: str | Address, dport: int, protocol: str, reason: Reason, text: str) -> Verdict:
    """No usable name: a network rule for the address allows it, else ``reason``."""
    address = _address(dst)
    rule = sandbox.network_rule(address, dport, protocol) if address is not None else None
    if rule is not None:
        return _allow(rule.rule_id, text)
    return _block(sandbox, reason, DEFAULT_DENY, text)


def _named(sandbox: Sandbox, dst: str | Address, dport: int, name: str, bound: bool, what: str) -> Verdict:
    """A TCP connection to ``dst`` that names ``name`` (SNI or Host); ``bound``: the resolver gave ``dst`` for it."""
    text = f"{what} {name} to {dst}:{dport}"
    if _is_address(name):
        return _by_address(sandbox, dst, dport, "tcp", Reason.DIRECT_IP, text)
    rule = sandbox.host_rule(name, dport)
    if rule is not None and bound:
        unexpected = _unexpected(sandbox, rule, _SPOKEN[what], text)  # a host rule's `expect:` (red team 6)
        return unexpected if unexpected is not None else _allow(rule.rule_id, text)
    address = _address(dst)
    network = sandbox.network_rule(address, dport, "tcp") if address is not None else None
    if network is not None:
        return _allow(network.rule_id, text)  # the address is allowed itself, whatever the name says
    if rule is not None:
        return _block(sandbox, Reason.NAME_ADDRESS_MISMATCH, rule.rule_id, f"{text}: not an address resolved for it")
    return _block(sandbox, Reason.NOT_ALLOWLISTED, DEFAULT_DENY, text)


def network_rule_for(sandbox: Sandbox, dst: str | Address, dport: int) -> NetworkRule | None:
    """The TCP network rule that covers ``dst``:``dport``, if any."""
    address = _address(dst)
    return sandbox.network_rule(address, dport, "tcp") if address is not None else None


_SPOKEN: Final = {"sni": Expect.TLS, "host": Expect.HTTP}
"""What a connection that names its host (`_named`'s ``what``) speaks."""


def _unexpected(sandbox: Sandbox, rule: NetworkRule | HostRule, what: Expect, text: str) -> Verdict | None:
    """A block when ``rule`` does not expect ``what`` (its ``expect:`` list), else None."""
    if rule.expects(what):
        return None
    expected = ", ".join(sorted(rule.expect))
    return _block(sandbox, Reason.NOT_ALLOWLISTED, rule.rule_id, f"{text}: {what} not expected (expect: {expected})")


def _network_tls(sandbox: Sandbox, rule: NetworkRule, name: str, bound: bool, text: str) -> Verdict:
    """TLS that only a network rule lets through: its SNI must be bound to the address (the resolver answered the
    name with it), unless the rule says ``tls: any`` (then it passes, recorded)."""
    unexpected = _unexpected(sandbox, rule, Expect.TLS, text)
    if unexpected is not None:
        return unexpected
    if name and bound and not _is_address(name):
        return _allow(rule.rule_id, text)
    if not name:
        reason, why = Reason.TLS_NO_SNI, "no SNI"
    elif _is_address(name):
        reason, why = Reason.DIRECT_IP, "an address as SNI"
    elif sandbox.name_allowed(name) is not None:
        reason, why = Reason.NAME_ADDRESS_MISMATCH, "SNI not resolved to this address"
    else:
        reason, why = Reason.NOT_ALLOWLISTED, "SNI not resolved to this address"
    if rule.tls is TlsNames.ANY:
        return Verdict(Enforcement.RECORD, reason, rule.rule_id, evidence(f"{text}: {why} (tls: any)"))
    return _block(sandbox, reason, rule.rule_id, f"{text}: {why} (tls: bound)")


def decide_tls(sandbox: Sandbox, dst: str | Address, dport: int, sni: str | None, bound: bool) -> Verdict:
    """A TLS connection, judged on its ClientHello's server name. To an address a network rule covers, the name
    must be bound to it unless a host rule allows it there (`_network_tls`)."""
    name = _name(sni)
    network = network_rule_for(sandbox, dst, dport)
    if network is not None and not (name and bound and sandbox.host_rule(name, dport) is not None):
        return _network_tls(sandbox, network, name, bound, f"sni {name or '-'} to {dst}:{dport}")
    if not name:
        return _by_address(sandbox, dst, dport, "tcp", Reason.TLS_NO_SNI, f"TLS without SNI to {dst}:{dport}")
    return _named(sandbox, dst, dport, name, bound, "sni")


def decide_http(sandbox: Sandbox, dst: str | Address, dport: int, host: str | None, bound: bool) -> Verdict:
    """A plaintext HTTP request, judged on its Host (a ``:port`` suffix is ignored: ``dport`` is what counts)."""
    name = _name(host)
    network = network_rule_for(sandbox, dst, dport)
    if network is not None and not (name and bound and sandbox.host_rule(name, dport) is not None):
        unexpected = _unexpected(sandbox, network, Expect.HTTP, f"host {name or '-'} to {dst}:{dport}")
        if unexpected is not None:
            return unexpected
    if not name:
        return _by_address(sandbox, dst, dport, "tcp", Reason.DIRECT_IP, f"HTTP without Host to {dst}:{dport}")
    return _named(sandbox, dst, dport, name, bound, "host")


def decide_authority_port(sandbox: Sandbox, dst: str | Address, dport: int, host: str, port: str) -> Verdict:
    """A request whose Host or target names a port other than the connection's (``Host: allowed.lab:22`` on a
    connection to port 8080): refused whatever the rules (red team 9). A server that routes by the Host's port
    would take it to a port no rule was asked about, and an ordinary client behind a transparent gateway names
    the port it connects to, or none."""
    text = f"host {_name(host) or '-'} names port {port[:16]!r} on a connection to {dst}:{dport}"
    return _block(sandbox, Reason.NOT_ALLOWLISTED, DEFAULT_DENY, text)


def decide_fronting(sandbox: Sandbox, sni: str, host: str | None) -> Verdict:
    """A request inside intercepted TLS: its Host must be the SNI that was allowed (or absent)."""
    allowed, asked = _name(sni), _name(host)
    rule = sandbox.name_allowed(allowed)
    rule_id = rule.rule_id if rule is not None else DEFAULT_DENY
    if asked and asked != allowed:
        return _block(sandbox, Reason.DOMAIN_FRONTING, rule_id, f"host {asked} inside TLS for sni {allowed}")
    return _allow(rule_id, f"host {asked or '-'} inside TLS for sni {allowed}")


def decide_raw(sandbox: Sandbox, dst: str | Address, dport: int, protocol: str, bound_names: Iterable[str]) -> Verdict:
    """A stream with no name of its own: a network rule, or an allowed name the resolver answered ``dst`` for."""
    names = sorted(bound_names)
    text = f"{protocol} {dst}:{dport}" + (f" ({', '.join(names)})" if names else "")
    address = _address(dst)
    network = sandbox.network_rule(address, dport, protocol) if address is not None else None
    if network is not None:
        return _allow(network.rule_id, text)
    if protocol == "tcp":  # host rules are TCP rules
        for name in names:
            rule = sandbox.host_rule(name, dport)
            if rule is not None:
                return _allow(rule.rule_id, text)
    if names:
        return _block(sandbox, Reason.NOT_ALLOWLISTED, DEFAULT_DENY, text)
    return _block(sandbox, Reason.DIRECT_IP, DEFAULT_DENY, text)


def decide_finding(sandbox: Sandbox, finding: Finding) -> Verdict:
    """A detector's finding, through the sandbox's action for its category (and the sandbox's mode)."""
    return _detected(sandbox, finding, _CATEGORY_REASON[finding.category])


def decide_suspicion(sandbox: Sandbox, finding: Finding) -> Verdict:
    """A finding that ordinary traffic can also produce (a TLS shape, egress.detect.tlsshape.SUSPECTED): the
    category's action, but at most ``record``: it is recorded, never blocked on its own."""
    verdict = decide_finding(sandbox, finding)
    if verdict.action in {Enforcement.BLOCK, Enforcement.WOULD_BLOCK}:
        return Verdict(Enforcement.RECORD, verdict.reason, verdict.rule, verdict.evidence, finding)
    return verdict


def decide_watched(sandbox: Sandbox, finding: Finding) -> Verdict:
    """A finding of the TLS shape watcher on TLS relayed through a network rule: a suspected shape
    (`tlsshape.SUSPECTED`) is at most recorded (`decide_suspicion`); mining told from the shape
    (`miningshape`) blocks only where the sandbox's ``detectors.mining_shape`` says ``block``."""
    suspected = finding.protocol in tlsshape.SUSPECTED
    if finding.detector == miningshape.NAME:
        suspected = sandbox.detectors.mining_shape is not DetectorAction.BLOCK
    return decide_suspicion(sandbox, finding) if suspected else decide_finding(sandbox, finding)


def _detected(sandbox: Sandbox, finding: Finding, reason: Reason) -> Verdict:
    field = finding.category.value.replace("-", "_")
    action: DetectorAction = getattr(sandbox.detectors, field)
    rule = f"sandboxes.{sandbox.name}.detectors.{field}"
    text = f"{finding.protocol}: {finding.evidence}"
    if action is DetectorAction.BLOCK:
        return _block(sandbox, reason, rule, text, finding)
    if action is DetectorAction.RECORD:
        return Verdict(Enforcement.RECORD, reason, rule, evidence(text), finding)
    return _allow(rule, text, finding)


def decide_dns(sandbox: Sandbox, qname: str, finding: Finding | None) -> Verdict:
    """A DNS question for ``qname`` (the hostname that will be forwarded, `dns.Question.hostname`): the DoH canary,
    over-long names, the detectors' finding, then the allowlist. The name is judged exactly as it is: unlike SNI
    and Host, a query name has no port or brackets to strip, and one that is no hostname is refused."""
    name = qname.lower().removesuffix(".")
    if not name or not set(name) <= _HOSTNAME_CHARS or "" in name.split("."):
        return decide_dns_malformed(sandbox, name, "not a hostname")
    if name == DOH_CANARY:
        return _block(sandbox, Reason.DOH_CANARY, DOH_CANARY_RULE, name, finding)
    if len(name) > sandbox.dns.max_name_length:
        rule = f"sandboxes.{sandbox.name}.dns.max_name_length"
        text = f"{len(name)} characters > {sandbox.dns.max_name_length}: {name}"
        return _block(sandbox, Reason.DNS_TUNNEL, rule, text, finding)
    recorded: Verdict | None = None
    if finding is not None:
        reason = Reason.DNS_TUNNEL if finding.category is Category.TUNNEL else _CATEGORY_REASON[finding.category]
        verdict = _detected(sandbox, finding, reason)
        if verdict.action in {Enforcement.BLOCK, Enforcement.WOULD_BLOCK}:
            return verdict
        recorded = verdict if verdict.action is Enforcement.RECORD else None
    allowed = sandbox.name_allowed(name)
    if allowed is None:
        return _block(sandbox, Reason.DNS_REFUSED, DEFAULT_DENY, name, finding)
    return recorded if recorded is not None else _allow(allowed.rule_id, name, finding)


def decide_dns_malformed(sandbox: Sandbox, shown: str, problem: str) -> Verdict:
    """A query that is not one standard question for a hostname: blocked in every mode (there is nothing that
    could be forwarded as judged), with ``shown`` the name in escaped presentation form."""
    return Verdict(Enforcement.BLOCK, Reason.DNS_MALFORMED, DNS_QUERY_FORM, evidence(f"{problem}: {shown}"))


def decide_dns_answer(sandbox: Sandbox, rule: str, problem: str, finding: Finding | None = None) -> Verdict:
    """An upstream answer for an allowed name that points where it must not (``rule``: what says so)."""
    if finding is not None:
        return _detected(sandbox, finding, _CATEGORY_REASON[finding.category])
    return _block(sandbox, Reason.DNS_ANSWER, rule, problem)


def decide_dns_dropped() -> Verdict:
    """One query the kernel dropped at the resolver's socket: nobody was answered, so it is a block. The
    evidence is the same for each, so the records of a burst's drops aggregate into one with their count."""
    text = "DNS datagram dropped by the kernel (receive buffer full)"
    return Verdict(Enforcement.BLOCK, Reason.DNS_DROPPED, DNS_RECEIVE_BUFFER, evidence(text))


def decide_connection_limit(sandbox: Sandbox, transport: str, detail: str = "") -> Verdict:
    """A new connection nftables dropped because ``sandbox`` already held its ``max_connections``: a block in
    every mode (the bound protects the gateway's workers, as the anti-spoofing protects the gateway)."""
    text = f"{transport} over max_connections {sandbox.max_connections} {detail}".strip()
    rule = f"sandboxes.{sandbox.name}.max_connections"
    return Verdict(Enforcement.BLOCK, Reason.CONNECTION_LIMIT, rule, evidence(text))


def decide_idle_limit(closed: int, total: int) -> Verdict:
    """``closed`` connections of a sandbox that had not sent a byte, closed by a proxy worker's idle bound since its
    last such record (``total`` in all): blocked in every mode (nothing was read, nothing forwarded)."""
    text = f"{closed} idle connections closed ({total} in all): over the worker's bound of connections not speaking"
    return Verdict(Enforcement.BLOCK, Reason.IDLE_LIMIT, IDLE_LIMIT_RULE, evidence(text))


def decide_idle_timeout(quiet_s: float, detail: str) -> Verdict:
    """A connection closed after ``quiet_s`` seconds without progress (``detail``: what it last did): blocked in
    every mode (the timeout protects the worker, as the idle bound does)."""
    text = f"no progress for {quiet_s:.0f} s, closed by the worker's idle timeout: {detail}"
    return Verdict(Enforcement.BLOCK, Reason.IDLE_TIMEOUT, IDLE_TIMEOUT_RULE, evidence(text))


def decide_unknown_source(src: str | Address) -> Verdict:
    """Traffic from an address in no sandbox: always blocked (there is no sandbox whose mode could say report)."""
    return Verdict(Enforcement.BLOCK, Reason.SPOOFED_SOURCE, ANTI_SPOOFING, evidence(f"source {src} is in no sandbox"))


def decide_drop(sandbox: Sandbox, transport: str, finding: Finding | None = None, detail: str = "") -> Verdict:
    """A packet nftables dropped (or, in report mode, logged and let through) for ``sandbox``.

    ``finding``: what the detectors recognised in it (an ICMP tunnel, a VPN handshake), which names the reason;
    ``detail``: what the firewall said (its log prefix).
    """
    reason = _CATEGORY_REASON[finding.category] if finding is not None else Reason.FIREWALL_DROP
    text = f"{finding.protocol}: {finding.evidence}" if finding is not None else f"{transport} {detail}".strip()
    return _block(sandbox, reason, DEFAULT_DENY, text, finding)
