"""The lab's shape as frozen data: namespace and link names, addresses, and the fake internet's servers.

Three network namespaces, each named ``<prefix><role>``::

    sandbox (sbx) ──veth── gateway (gw) ──veth── internet (net)
    10.203.1.2           10.203.1.1 | 10.203.2.1        10.203.2.2, servers on lo (198.18.10.0/24)

Every name carries the prefix (``egress-`` for the real lab; tests pass their own) so two labs never collide.
Server addresses live on the internet namespace's ``lo`` (this kernel has no ``dummy`` link type). 198.18.0.0/15
is the benchmarking range (RFC 2544) and 2001:db8::/32 the documentation range (RFC 3849): neither is routed on
the real internet, and both only exist inside the lab's namespaces.

Nothing here runs anything: `egress.lab.netns` builds what this module describes.
"""

from __future__ import annotations

import hashlib
import pathlib
import re
from dataclasses import dataclass

DEFAULT_PREFIX = "egress-"
ZONE = "lab"
"""The DNS zone the lab's authority serves: every lab name ends in ``.lab``."""
TTL = 60
"""TTL of every address record the authority gives."""
TUNNEL_ZONE = "t.lab"
"""Names under this one answer TXT and NULL with data, so a DNS-tunnel attempt has something to ask."""

SANDBOX_V4, GATEWAY_SBX_V4, SANDBOX_NET_V4 = "10.203.1.2", "10.203.1.1", "10.203.1.0/24"
SANDBOX_V6, GATEWAY_SBX_V6, SANDBOX_NET_V6 = "fd00:203:1::2", "fd00:203:1::1", "fd00:203:1::/64"
GATEWAY_UP_V4, INTERNET_V4, UPLINK_NET_V4 = "10.203.2.1", "10.203.2.2", "10.203.2.0/24"
GATEWAY_UP_V6, INTERNET_V6, UPLINK_NET_V6 = "fd00:203:2::1", "fd00:203:2::2", "fd00:203:2::/64"
SERVERS_NET_V4, SERVERS_NET_V6 = "198.18.10.0/24", "2001:db8:10::/64"

_PREFIX_RE = re.compile(r"^[a-z][a-z0-9-]{0,11}$")


@dataclass(frozen=True, slots=True)
class Server:
    """One fake internet host: its DNS name, addresses (on the internet namespace's lo) and what it serves."""

    key: str
    """Short identifier used in code (``allowed``, ``pool``...)."""
    name: str
    """Its DNS name in the lab zone."""
    v4: str
    v6: str
    tcp: tuple[int, ...]
    udp: tuple[int, ...]
    role: str
    """One line saying what it is, for docs and ``status``."""


SERVERS: tuple[Server, ...] = (
    Server(
        "allowed",
        "allowed.lab",
        "198.18.10.1",
        "2001:db8:10::1",
        (80, 443),
        (443,),
        "allowed web site (HTTP, HTTPS; UDP 443 answers QUIC)",
    ),
    Server(
        "blocked", "blocked.lab", "198.18.10.2", "2001:db8:10::2", (80, 443), (), "disallowed web site (HTTP, HTTPS)"
    ),
    Server(
        "pool",
        "pool.lab",
        "198.18.10.3",
        "2001:db8:10::3",
        (3333, 443, 4443),
        (),
        "Stratum v1 pool (3333, 443 plain or TLS, 4443 TLS)",
    ),
    Server("xmr", "xmr.lab", "198.18.10.4", "2001:db8:10::4", (3334,), (), "XMRig-style pool (JSON-RPC login)"),
    Server("ns", "ns.lab", "198.18.10.5", "2001:db8:10::5", (53,), (53,), "DNS authority for the zone lab."),
    Server("doh", "doh.lab", "198.18.10.6", "2001:db8:10::6", (443,), (), "DNS over HTTPS (/dns-query)"),
    Server("ssh", "ssh.lab", "198.18.10.7", "2001:db8:10::7", (80,), (), "SSH-like server on port 80"),
    Server("ws", "ws.lab", "198.18.10.8", "2001:db8:10::8", (80,), (), "WebSocket echo"),
)
TUNNEL_V4, TUNNEL_V6 = "198.18.10.9", "2001:db8:10::9"
"""What A/AAAA queries under `TUNNEL_ZONE` answer (nothing listens there)."""


def server(key: str) -> Server:
    """The server with this key; KeyError if there is none."""
    for candidate in SERVERS:
        if candidate.key == key:
            return candidate
    raise KeyError(key)


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it makes valid namespace and interface names, else raise ValueError.

    Interface names are at most 15 bytes (IFNAMSIZ - 1): the prefix's short form plus two letters must fit.
    """
    if not _PREFIX_RE.match(prefix):
        raise ValueError(f"lab prefix {prefix!r}: want 1-12 of a-z, 0-9, '-', starting with a letter")
    return prefix


@dataclass(frozen=True, slots=True)
class Lab:
    """The names of one lab instance; everything derives from the prefix."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        check_prefix(self.prefix)

    @property
    def short(self) -> str:
        """The prefix without dashes, used to build interface names."""
        return self.prefix.replace("-", "")

    @property
    def sandbox_ns(self) -> str:
        return f"{self.prefix}sbx"

    @property
    def gateway_ns(self) -> str:
        return f"{self.prefix}gw"

    @property
    def internet_ns(self) -> str:
        return f"{self.prefix}net"

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return (self.sandbox_ns, self.gateway_ns, self.internet_ns)

    @property
    def sandbox_if(self) -> str:
        """The sandbox's end of the sandbox link (in the sandbox namespace)."""
        return f"{self.short}sb"

    @property
    def gateway_sandbox_if(self) -> str:
        """The gateway's end of the sandbox link: what ``--sandbox-if`` names."""
        return f"{self.short}gs"

    @property
    def gateway_uplink_if(self) -> str:
        """The gateway's end of the uplink: what ``--uplink-if`` names."""
        return f"{self.short}gu"

    @property
    def internet_if(self) -> str:
        """The internet's end of the uplink (in the internet namespace)."""
        return f"{self.short}in"

    @property
    def state_dir(self) -> pathlib.Path:
        """Where the lab keeps its files: the lab CA and server certificates (see `egress.lab.certs`)."""
        return pathlib.Path("/run") / f"{self.prefix}lab"

    @property
    def ca_file(self) -> pathlib.Path:
        """The lab CA certificate (PEM) that sandbox clients trust."""
        return self.state_dir / "ca.pem"

    @property
    def resolv_conf(self) -> pathlib.Path:
        """``ip netns exec`` bind-mounts this over /etc/resolv.conf inside the sandbox namespace."""
        return pathlib.Path("/etc/netns") / self.sandbox_ns / "resolv.conf"


def address_records(name: str) -> tuple[str, str] | None:
    """(IPv4, IPv6) that the lab authority answers for ``name`` (lowercase, no trailing dot), or None."""
    name = name.lower().rstrip(".")
    for candidate in SERVERS:
        if name == candidate.name:
            return (candidate.v4, candidate.v6)
    if name == TUNNEL_ZONE or name.endswith("." + TUNNEL_ZONE):
        return (TUNNEL_V4, TUNNEL_V6)
    return None


PACKAGE_PATH = "/simple/pkg/pkg-1.0.tar.gz"
PACKAGE_SIZE = 300 * 1024
BIG_PATH = "/big"
"""``/big?mb=N`` streams N MiB (default `BIG_DEFAULT_MB`) for throughput benchmarks."""
BIG_DEFAULT_MB = 100
BIG_MAX_MB = 100_000


def package_bytes() -> bytes:
    """The content of the allowed site's package: deterministic, incompressible, so a client can check it."""
    return hashlib.shake_256(b"egress lab package").digest(PACKAGE_SIZE)
