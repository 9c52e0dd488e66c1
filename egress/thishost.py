"""Addresses that are the gateway itself by some name: never dialled for a sandbox, never bound from an answer.

The table redirects every sandbox TCP connection that is not to one of the gateway's own addresses (``fib daddr
type local``) to a proxy worker, which dials its original destination. Red team 10b found two destinations the
kernel's typing misses and a ``connect`` still takes to this host: 0.0.0.0 (typed broadcast) and
``::ffff:127.0.0.1`` (IPv4-mapped, no address of the host); through them the agent reached the gateway's Redis.
The table now drops such destinations (`egress.nft.render.NEVER_ON_THE_WIRE`); this module is the second layer,
for the proxy (`egress.proxy.gate.Gate.on_connect`, before any rule is read, whatever the mode) and the resolver
(`egress.dnsserver.answers`, whatever ``answers`` or ``allow_ranges`` say):

- unspecified (``0.0.0.0/8``, ``::``), loopback (``127.0.0.0/8``, ``::1``), IPv4-mapped (``::ffff:0:0/96``) and
  IPv4-compatible (``::/96``) addresses: a socket's "this host";
- link-local (``169.254.0.0/16``, ``fe80::/10``: the gateway's own link, a cloud's metadata service at
  169.254.169.254 speaks for the gateway's identity), multicast and the limited broadcast;
- the gateway's own addresses, every interface, as the kernel types them local or broadcast (`OwnAddresses`,
  read from ``/proc/net/fib_trie`` and ``/proc/net/if_inet6`` of the process's namespace, again after a while).
"""

from __future__ import annotations

import functools
import ipaddress
import pathlib
import time
from collections.abc import Callable, Collection
from typing import Final

from egress.decide import Enforcement, Reason, Verdict
from egress.detect.base import evidence

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

GATEWAY_GUARD: Final = "gateway-guard"
"""The rule label of a destination refused for being the gateway itself (no policy rule can allow it)."""
_COMPAT: Final = ipaddress.IPv6Network("::/96")
_BROADCAST: Final = ipaddress.IPv4Address("255.255.255.255")
FIB_TRIE: Final = pathlib.Path("/proc/net/fib_trie")
IF_INET6: Final = pathlib.Path("/proc/net/if_inet6")
REFRESH_S: Final = 5.0
"""How long `OwnAddresses` keeps what it read (an address added to the gateway is refused within this)."""


@functools.lru_cache(maxsize=4096)
def _parsed(text: str) -> Address | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0].strip("[]"))
    except ValueError:
        return None


def why_this_host(address: Address) -> str | None:
    """Why ``address`` means this host (or its link) to a socket of the gateway; None when it does not."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return "IPv4-mapped"
        if address in _COMPAT:
            return "unspecified" if address.is_unspecified else "loopback" if address.is_loopback else "IPv4-compatible"
    elif address.is_unspecified or address in _ZERO_NET:
        return "unspecified"
    elif address == _BROADCAST:
        return "broadcast"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    return None


_ZERO_NET: Final = ipaddress.IPv4Network("0.0.0.0/8")


@functools.lru_cache(maxsize=4096)
def _judged(text: str) -> tuple[Address | None, str | None]:
    """``text`` as an address and `why_this_host` of it, kept per text (every connection asks; a gateway's
    connections go to few addresses)."""
    address = _parsed(text)
    return address, why_this_host(address) if address is not None else None


def refusal(dst: str, own: Collection[Address] = ()) -> Verdict | None:
    """The verdict for dialling ``dst`` (text) when it is this host: a block in every mode (report mode is about what
    a sandbox may reach, not about the gateway), recorded ``firewall-drop``; None for any other destination."""
    address, why = _judged(dst)
    if address is None:
        return None
    if why is None and own and address in own:
        why = "an address of the gateway"
    if why is None:
        return None
    text = evidence(f"destination {address} is the gateway itself ({why}): never dialled")
    return Verdict(Enforcement.BLOCK, Reason.FIREWALL_DROP, GATEWAY_GUARD, text)


def read_fib_trie(text: str) -> frozenset[Address]:
    """The IPv4 addresses ``/proc/net/fib_trie`` types local or broadcast (each a ``/32 host LOCAL`` or ``/32 link
    BROADCAST`` line under its ``|-- address`` line)."""
    found: set[Address] = set()
    last: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|--"):
            last = stripped[3:].strip()
        elif last is not None and stripped.startswith("/32 ") and stripped.split()[-1] in ("LOCAL", "BROADCAST"):
            address = _parsed(last)
            if address is not None:
                found.add(address)
    return frozenset(found)


def read_if_inet6(text: str) -> frozenset[Address]:
    """The IPv6 addresses of ``/proc/net/if_inet6`` (32 hex digits first on each line)."""
    found: set[Address] = set()
    for line in text.splitlines():
        digits = line.split()[:1]
        if digits and len(digits[0]) == 32:
            found.add(ipaddress.IPv6Address(int(digits[0], 16)))
    return frozenset(found)


def _read(path: pathlib.Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


class OwnAddresses:
    """The gateway's own addresses, read again after `REFRESH_S` (``clock`` injected for tests)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, read: Callable[[pathlib.Path], str] = _read):
        self._clock = clock
        self._read = read
        self._addresses: frozenset[Address] = frozenset()
        self._at: float | None = None

    def __call__(self) -> frozenset[Address]:
        now = self._clock()
        if self._at is None or now - self._at >= REFRESH_S:
            self._addresses = read_fib_trie(self._read(FIB_TRIE)) | read_if_inet6(self._read(IF_INET6))
            self._at = now
        return self._addresses
