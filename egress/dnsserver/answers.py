"""Where an upstream answer for an allowed name may point: the resolver binds what it answers, so an answer is a
grant of access, and a name under an allowed wildcard whose zone an attacker runs could point anywhere.

Per address record (all three sections), in order:

- in the sandbox's ``dns.deny_ranges``: the whole answer is refused (known pools, blocked sites);
- the rule pins its answers (``answers: [CIDR...]``) and the address is outside them: refused;
- the gateway itself by another name (`egress.thishost`: unspecified, loopback, IPv4-mapped...): the record is
  dropped whatever ``answers`` or ``dns.allow_ranges`` say;
- not globally reachable (private, loopback, link-local, shared, benchmarking, documentation..., also inside
  IPv4-mapped, NAT64 and 6to4 IPv6 addresses) and in no ``dns.allow_ranges``: the record is dropped (DNS
  rebinding; Stripe's smokescreen denies such destinations the same way), the rest of the answer stands.

A CNAME target, owner name or address in the answer that is on a name list (a pool, a reverse-tunnel service;
lists carry addresses too) refuses the answer with that list's finding. Pure: the resolver records and enforces
what `judge` returns.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from egress.decide import Verdict, decide_dns_answer
from egress.detect import dns
from egress.detect.base import Finding, evidence
from egress.detect.names import NameLists
from egress.policy.model import Address, HostRule, Network, Sandbox
from egress.thishost import why_this_host

Sections = tuple[tuple[dns.Record, ...], tuple[dns.Record, ...], tuple[dns.Record, ...]]

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIXTOFOUR = ipaddress.IPv6Network("2002::/16")


@dataclass(frozen=True, slots=True)
class Judged:
    """What the resolver may answer: the kept records, or a refusal; and the records it dropped, with why."""

    sections: Sections
    """The records to answer with; with a refusal, the upstream's whole answer (what passes when the refusal is
    not enforced: report mode, a list's category set to record or allow)."""
    refused: Verdict | None
    dropped: tuple[str, ...]


def _embedded(address: Address) -> Address:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64, 6to4), else the address itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(address.packed[-4:])
        if address.sixtofour is not None:
            return address.sixtofour
    return address


def _within(address: Address, networks: tuple[Network, ...]) -> Network | None:
    return next((network for network in networks if address in network), None)


def is_global(address: Address) -> bool:
    """Globally reachable, judged on the embedded IPv4 address too (``::ffff:10.0.0.1`` is not global)."""
    inner = _embedded(address)
    return address.is_global and inner.is_global and not inner.is_multicast and not address.is_multicast


def _listed(record: dns.Record, lists: NameLists) -> Finding | None:
    """A pool's (or a reverse-tunnel service's) name or address in the record, as a finding of its list."""
    target = dns.target_of(record)
    address = dns.address_of(record)
    hits = [(name, lists.match(name)) for name in (record.name, target) if name is not None]
    if address is not None:
        hits.append((address, lists.match_address(address)))
    for what, hit in hits:
        if hit is not None and hit[2] != "doh":  # a DoH resolver's name or address: the proxy judges the use
            list_name, category, protocol = hit
            return Finding(category, protocol, "dns-answer", evidence(f"answer {what} on {list_name}"))
    return None


def judge(sandbox: Sandbox, name: str, rule: HostRule, response: dns.Message, lists: NameLists) -> Judged:
    """Judge the records of ``response`` (the upstream's answer for ``name``, which ``rule`` allowed)."""
    kept: list[tuple[dns.Record, ...]] = []
    dropped: list[str] = []
    where = f"sandboxes.{sandbox.name}.dns"
    whole: Sections = (response.answers, response.authorities, response.additionals)
    for section in whole:
        keep: list[dns.Record] = []
        for record in section:
            finding = _listed(record, lists)
            if finding is not None:
                return Judged(whole, decide_dns_answer(sandbox, rule.rule_id, "", finding), ())
            text = dns.address_of(record)
            if text is None:
                keep.append(record)
                continue
            address = ipaddress.ip_address(text)
            denied = _within(address, sandbox.dns.deny_ranges) or _within(_embedded(address), sandbox.dns.deny_ranges)
            if denied is not None:
                problem = f"{name} answered {address}, in dns.deny_ranges {denied}"
                return Judged(whole, decide_dns_answer(sandbox, f"{where}.deny_ranges", problem), ())
            if rule.answers and _within(address, rule.answers) is None:
                problem = f"{name} answered {address}, outside {rule.rule_id}.answers"
                return Judged(whole, decide_dns_answer(sandbox, f"{rule.rule_id}.answers", problem), ())
            this_host = why_this_host(address)
            if this_host is not None:  # whatever answers/allow_ranges say: never bound (red team 10b)
                dropped.append(f"{name} answered {address}: the gateway itself ({this_host}), never bound")
                continue
            if not rule.answers and not is_global(address) and _within(address, sandbox.dns.allow_ranges) is None:
                dropped.append(f"{name} answered {address}: not a global address (rebinding)")
                continue
            keep.append(record)
        kept.append(tuple(keep))
    answers, authorities, additionals = kept
    return Judged((answers, authorities, additionals), None, tuple(dropped))


def dropped_verdict(sandbox: Sandbox, dropped: tuple[str, ...]) -> Verdict:
    """The record of address records dropped from an answer (the rest of the answer was given)."""
    return decide_dns_answer(sandbox, f"sandboxes.{sandbox.name}.dns.allow_ranges", "; ".join(dropped))
