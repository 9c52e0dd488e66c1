"""Pre-flight: what must hold on the host before the gateway applies anything, each failure one line naming the
flag (or the host setting) and what to fix.

A gateway started half-configured must not start at all: an interface name with a typo, forwarding off, an
upstream resolver that is not an address or does not answer, Redis unreachable with no writable spool, a state
directory it cannot write, ports already taken. `egress gateway run` runs `preflight` before the first nftables
change and exits 2 on any problem; `egress doctor` runs the same checks, plus the kernel features the gateway
needs (`kernel_problems`), without starting anything.

The checks are pure over a `Host` (the probes): `egress.gateway.hostprobe.SystemHost` asks the real host; tests
of the decisions give their own answers, tests of the probes run them in namespaces they create.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Protocol

from egress.gateway.config import GatewayConfig
from egress.nft.render import render
from egress.policy import links
from egress.policy.model import Policy
from egress.record.urls import shown, without_credentials

FORWARDING: tuple[tuple[str, str], ...] = (
    ("net.ipv4.ip_forward", "net/ipv4/ip_forward"),
    ("net.ipv6.conf.all.forwarding", "net/ipv6/conf/all/forwarding"),
)
"""The sysctls that must be 1 (name as ``sysctl`` spells it, path under /proc/sys)."""
RP_FILTER_STRICT = "1"
"""Strict reverse-path filtering (RFC 3704 §2.2; loose mode, 2, passes a sandbox's address forged on the uplink,
since a route back to it exists)."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing to fix: ``where`` is the flag or host setting, ``what`` says what is wrong and what to do."""

    where: str
    what: str

    def line(self) -> str:
        return f"egress: {self.where}: {self.what}"


class Host(Protocol):
    """What the checks ask the host."""

    def interface(self, name: str) -> str | None:
        """``"up"``, ``"down"``, or None when there is no such interface."""

    def sysctl(self, path: str) -> str | None:
        """The value under /proc/sys, or None if it does not exist."""

    def nft_check(self, script: str) -> str | None:
        """``nft -c``'s complaint about ``script``, or None when it would apply."""

    def dns_answers(self, address: str, port: int) -> str | None:
        """Why the resolver at ``address`` did not answer a probe query, or None when it answered."""

    def redis(self, url: str) -> str | None:
        """Why Redis at ``url`` did not answer PING, or None when it did."""

    def redis_lets_anyone_in(self, url: str) -> bool:
        """Whether Redis at ``url`` answers PING from a client that gives no user and no password."""

    def writable(self, directory: str) -> str | None:
        """Why a file cannot be created in ``directory`` (created if missing), or None when it can."""

    def port_taken(self, port: int, udp: bool) -> bool:
        """Whether something on this host already listens on ``port``."""


def preflight(config: GatewayConfig, policy: Policy, host: Host) -> list[Problem]:
    """Every problem that would make the gateway run half-configured, in the order of its flags."""
    return [
        *_interfaces(config, host),
        *_forwarding(host),
        *_upstream(config.upstream_dns, host),
        *_links(config, policy),
        *_table(config, policy, host),
        *_records(config, host),
        *_state(config, host),
        *_ports(config, host),
    ]


def _interfaces(config: GatewayConfig, host: Host) -> list[Problem]:
    problems: list[Problem] = []
    for flag, name in (("--sandbox-if", config.sandbox_if), ("--uplink-if", config.uplink_if)):
        state = host.interface(name)
        if state is None:
            problems.append(Problem(flag, f"no interface {name!r} on this host (`ip link` lists them)"))
        elif state != "up":
            problems.append(Problem(flag, f"interface {name!r} is down (`ip link set {name} up`)"))
    if config.sandbox_if == config.uplink_if:
        problems.append(Problem("--uplink-if", "the uplink must be another interface than the sandbox side"))
    return problems


def _forwarding(host: Host) -> list[Problem]:
    problems: list[Problem] = []
    for name, path in FORWARDING:
        value = host.sysctl(path)
        if value is not None and value.strip() != "1":
            problems.append(Problem(name, f"is {value.strip()}, must be 1 (`sysctl -w {name}=1`)"))
    return problems


def _links(config: GatewayConfig, policy: Policy) -> list[Problem]:
    """Sandboxes behind one interface once ``--sandbox-if`` is known (a sandbox naming it shares it with those
    that name none): refused unless the link pins sources (`egress.policy.links`); the loader saw the rest."""
    return [Problem("--sandbox-if", found.message()) for found in links.shared(policy.sandboxes, config.sandbox_if)]


def _table(config: GatewayConfig, policy: Policy, host: Host) -> list[Problem]:
    try:
        script = render(policy, config.nft_settings())
    except ValueError as exc:
        return [Problem("--sandbox-if/--uplink-if", f"cannot render the nftables table: {exc}")]
    complaint = host.nft_check(script)
    if complaint is not None:
        return [Problem("nftables", f"the table does not pass `nft -c`: {complaint}")]
    return []


def _state(config: GatewayConfig, host: Host) -> list[Problem]:
    complaint = host.writable(config.state_dir)
    if complaint is not None:
        return [Problem("--state-dir", f"{config.state_dir} is not writable: {complaint}")]
    return []


def _ports(config: GatewayConfig, host: Host) -> list[Problem]:
    problems = [
        Problem("--proxy-port", f"TCP port {port} is taken (another gateway still running?)")
        for port in config.proxy_ports
        if host.port_taken(port, udp=False)
    ]
    for port in config.dns_ports:
        if host.port_taken(port, udp=True):
            flag = "--dns-port" if port == config.dns_port else "--dns-port/--dns-processes"
            problems.append(Problem(flag, f"UDP port {port} is taken (another resolver?)"))
    return problems


def _upstream(upstream: str, host: Host) -> list[Problem]:
    try:
        address = ipaddress.ip_address(upstream)
    except ValueError:
        return [Problem("--upstream-dns", f"{upstream!r} is not an IP address (a resolver's address, e.g. 192.0.2.53)")]
    complaint = host.dns_answers(str(address), 53)
    if complaint is not None:
        return [Problem("--upstream-dns", f"{address} does not answer DNS: {complaint}")]
    return []


def _records(config: GatewayConfig, host: Host) -> list[Problem]:
    """Redis answers and cannot evict records, or the spool can take records until it answers (records are
    spooled, never lost). A Redis whose ``maxmemory-policy`` may evict keys is a problem whatever the spool: started
    that way, the gateway does not start (`egress.record.redis_facade.EvictingRedis`)."""
    answer = host.redis(config.redis_url)
    if answer is None:
        return []
    if "maxmemory-policy" in answer:  # it answered, and would evict
        return [Problem("--redis-url", f"Redis at {shown(config.redis_url)}: {answer}")]
    spool = config.spool_dir("supervisor")
    complaint = host.writable(spool)
    if complaint is None:
        return []  # Redis is away, but the spool keeps every record until it answers
    return [
        Problem(
            "--redis-url", f"Redis at {shown(config.redis_url)} does not answer and the spool {spool} is not writable"
        )
    ]


KERNEL_PROBE = """table inet egress_doctor {
  chain filter_probe {
    type filter hook forward priority filter; policy accept;
    ct state new log group 1
  }
  chain nat_probe {
    type nat hook prerouting priority dstnat; policy accept;
    meta l4proto tcp redirect to :1
  }
}
"""
"""A table with what the gateway's needs of the kernel: the inet family, conntrack, nflog, redirect."""


def kernel_problems(host: Host) -> list[Problem]:
    """What `egress doctor` checks besides the pre-flight: the kernel can run the gateway's table."""
    complaint = host.nft_check(KERNEL_PROBE)
    if complaint is None:
        return []
    return [Problem("kernel", f"nftables (inet family, conntrack, nflog, redirect) not usable: {complaint}")]


def hardening_warnings(config: GatewayConfig, host: Host) -> list[Problem]:
    """What `egress doctor` reports without failing: settings the gateway does not depend on but that add a layer."""
    return [*_rp_filter(config, host), *_redis_password(config, host)]


def _redis_password(config: GatewayConfig, host: Host) -> list[Problem]:
    """A Redis that answers anyone on its TCP port: the records, the policy history and the applied policy are
    there, so whatever reaches that port can read, erase or replace them (red team 10b reached the gateway's
    loopback from a sandbox before the guard closed it; the password is the layer behind the guard).
    deploy/install.sh gives a local Redis one. A unix socket is guarded by its file's mode: not asked."""
    if config.redis_url.startswith("unix:") or not host.redis_lets_anyone_in(config.redis_url):
        return []
    what = (f"Redis at {shown(without_credentials(config.redis_url))} answers without a password: anything that "
            "reaches its port can read, erase or replace the records and the policy. Set `requirepass` (deploy/"
            "install.sh does on a new install; docs/deploy.md, \"Redis\") and put it in the URL "
            "(redis://:PASSWORD@host:port/0)")  # fmt: skip
    return [Problem("--redis-url", what)]


def _rp_filter(config: GatewayConfig, host: Host) -> list[Problem]:
    """IPv4 reverse-path filtering, strict (deploy/sysctl/60-egress.conf sets it): the table itself drops a sandbox's
    source arriving on another interface (`egress.nft.render`, red team 10b), and strict ``rp_filter`` drops it in
    the kernel first. The kernel uses the larger of ``all`` and the interface's own value."""
    values = {where: host.sysctl(f"net/ipv4/conf/{where}/rp_filter") for where in ("all", config.uplink_if)}
    known = {where: value.strip() for where, value in values.items() if value is not None}
    if not known or max(known.values()) == RP_FILTER_STRICT:
        return []
    values_shown = ", ".join(f"{where} {value}" for where, value in known.items())
    what = (f"is {values_shown}, should be 1 (strict) on the uplink (`sysctl -w net.ipv4.conf.all.rp_filter=1`, "
            "deploy/sysctl/60-egress.conf): the table drops forged sandbox sources, strict rp_filter is the second "
            "layer")  # fmt: skip
    return [Problem("net.ipv4.conf.all.rp_filter", what)]
