"""Throwaway network namespaces for the nftables tests: sandbox ── gateway ── internet, joined by veth pairs.

Every name starts with ``egt-nft-`` (namespaces) or ``egtn`` (interfaces) plus a random tag, and `topology`
removes them all on the way out, failure or not. Addresses are private ranges that exist only inside these
namespaces; the internet namespace has no route anywhere else.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from egress.capture.nflog import in_netns
from tests.waiting import eventually


def run(netns: str | None, *command: str) -> str:
    full = ["ip", "netns", "exec", netns, *command] if netns else list(command)
    done = subprocess.run(full, capture_output=True, text=True, timeout=20, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(full)} failed: {done.stderr.strip()}")
    return done.stdout


def socket_in(netns: str, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket living in ``netns`` (usable from this thread)."""
    return in_netns(netns, lambda: socket.socket(family, kind, proto))


def raw_sender(topo: Topology) -> tuple[socket.socket, str]:
    """An AF_PACKET socket bound to the sandbox's link to the gateway (frames of any source), and that link's name."""
    sandbox_if = next(
        line.split(":")[1].strip().split("@")[0]
        for line in run(topo.sandbox, "ip", "-o", "link").splitlines()
        if "egtn" in line
    )
    sender = socket_in(topo.sandbox, socket.AF_PACKET, socket.SOCK_RAW)
    sender.bind((sandbox_if, 0))
    return sender, sandbox_if


@dataclass(frozen=True, slots=True)
class Topology:
    sandbox: str
    gateway: str
    internet: str
    sandbox_if: str
    """The gateway's interface towards the sandbox."""
    uplink_if: str
    """The gateway's interface towards the internet."""

    SANDBOX4 = "10.77.0.2"
    SHADOW4 = "10.77.0.70"
    SPOOF4 = "10.77.0.200"
    GATEWAY4 = "10.77.0.1"
    UPLINK4 = "10.78.0.1"
    INTERNET4 = "10.78.0.2"
    SANDBOX6 = "fd77::2"
    SHADOW6 = "fd77::170"
    SPOOF6 = "fd77::200"
    GATEWAY6 = "fd77::1"
    UPLINK6 = "fd78::1"
    INTERNET6 = "fd78::2"


def _link(ns: str, ifname: str, *addresses: str) -> None:
    for address in addresses:
        run(ns, "ip", "addr", "add", address, "dev", ifname, *(["nodad"] if ":" in address else []))
    run(ns, "ip", "link", "set", ifname, "up")


@contextlib.contextmanager
def topology() -> Iterator[Topology]:
    tag = secrets.token_hex(2)
    names = [f"egt-nft-{tag}-{role}" for role in ("sbx", "gw", "net")]
    sbx, gw, net = names
    created: list[str] = []
    try:
        for name in names:
            run(None, "ip", "netns", "add", name)
            created.append(name)
            run(name, "ip", "link", "set", "lo", "up")
            # No duplicate address detection on the links made next, link-local addresses too: while the gateway's
            # is tentative it sends no neighbour solicitation for an un-NATed reply (its source is not on the link),
            # so a DNS answer in the first second of a fresh topology was lost (CI, stop 19).
            run(name, "sysctl", "-q", "-w", "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0")
        s, g, u, i = (f"egtn{tag}{end}" for end in "sgui")
        run(None, "ip", "link", "add", s, "netns", sbx, "type", "veth", "peer", "name", g, "netns", gw)
        run(None, "ip", "link", "add", u, "netns", gw, "type", "veth", "peer", "name", i, "netns", net)
        t = Topology
        _link(sbx, s, f"{t.SANDBOX4}/24", f"{t.SHADOW4}/24", f"{t.SPOOF4}/24")
        _link(sbx, s, f"{t.SANDBOX6}/64", f"{t.SHADOW6}/64", f"{t.SPOOF6}/64")
        _link(gw, g, f"{t.GATEWAY4}/24", f"{t.GATEWAY6}/64")
        _link(gw, u, f"{t.UPLINK4}/24", f"{t.UPLINK6}/64")
        _link(net, i, f"{t.INTERNET4}/24", f"{t.INTERNET6}/64")
        # With duplicate address detection off nothing waits for the links' carrier any more: a datagram sent before
        # a veth's peer is up is dropped (a DHCPv6 solicit right after the topology was made was lost).
        ends = ((sbx, s), (gw, g), (gw, u), (net, i))
        eventually(lambda: all("LOWER_UP" in run(ns, "ip", "-o", "link", "show", "dev", dev) for ns, dev in ends))
        run(sbx, "ip", "route", "add", "default", "via", t.GATEWAY4)
        run(sbx, "ip", "-6", "route", "add", "default", "via", t.GATEWAY6)
        # The sandbox may send from addresses the gateway drops (spoofing tests): resolve the gateway statically so
        # that a neighbour solicitation from such an address never stands between a test and its packet.
        mac = run(gw, "cat", f"/sys/class/net/{g}/address").strip()
        run(sbx, "ip", "-6", "neigh", "replace", t.GATEWAY6, "lladdr", mac, "dev", s, "nud", "permanent")
        run(sbx, "ip", "neigh", "replace", t.GATEWAY4, "lladdr", mac, "dev", s, "nud", "permanent")
        run(gw, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        yield Topology(sbx, gw, net, g, u)
    finally:
        for name in reversed(created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20, check=False)


@contextlib.contextmanager
def namespace() -> Iterator[str]:
    """One empty namespace (loopback up), e.g. to check or apply a ruleset without touching the host."""
    name = f"egt-nft-{secrets.token_hex(2)}-tmp"
    run(None, "ip", "netns", "add", name)
    try:
        run(name, "ip", "link", "set", "lo", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=20, check=False)
