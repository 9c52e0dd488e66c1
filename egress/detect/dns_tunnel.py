"""DNS tunnelling and DNS exfiltration: a stateful tracker over the DNS messages of each client.

A tunnel shows across many queries, so unlike the flow detectors this keeps bounded state per
(client, base domain). Signals, and where the facts come from:

- Encoded labels. iodine encodes upstream data as base32 (alphabet a-z0-5) by default and probes base64 and
  base128 (8-bit bytes) (iodine README, "Operational info"; seen in tunnel/*iodine.pcap). dnscat2 encodes as
  lowercase hex and, with no domain configured, prefixes names with ``dnscat.`` (dnscat2 doc/protocol.md; seen
  in tunnel/ndpi_dns_exfiltration.pcap). dns2tcp uses base64 with ``+``, ``/``, ``=`` in labels (seen in
  tunnel/dmachard_dns2tcp.pcap). DNSExfiltrator sends base64url or base32 chunks in labels of up to 63
  characters and names of up to 255 (DNSExfiltrator README).
- Query types. iodine queries NULL by default and offers PRIVATE (65399), TXT, SRV, MX, CNAME, A (iodine man
  page, ``-T``); dnscat2 uses TXT, CNAME and MX (dnscat2 README); dns2tcp uses TXT (and KEY); DNSExfiltrator
  TXT. NULL is "experimental" (RFC 1035 3.3.10) and PRIVATE are 65280-65534
  (RFC 6895 3.1): ordinary clients never ask for them.
- Many unique subdomains under one base domain: every tunnel query must be unique to get past caches.

Not signals: IDN labels (``xn--``, RFC 3492) are base36-ish by design; reverse lookups (``arpa``) are long and
numeric; mDNS names (``local``) carry free text. Thresholds are in `DnsTunnelLimits`; the reasoning is in
docs/dns-tunnel-thresholds.md.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

from egress.detect import dns
from egress.detect.base import Category, Finding, evidence
from egress.detect.dns import CNAME, KEY, MX, NULL, SRV, TXT

DETECTOR = "dns_tunnel"

_RARE_TYPES = frozenset({NULL})
"""Types no ordinary client asks for; PRIVATE (65280-65534) is tested by range."""
_TUNNEL_TYPES = frozenset({NULL, CNAME, MX, TXT, KEY, SRV})
"""Types the tools above use to carry downstream data."""

_SKIP_TLDS = frozenset({"arpa", "local"})
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")
_HEX = frozenset("0123456789abcdef")
_DIGITS = frozenset("0123456789")

_TWO_LEVEL_SUFFIXES = frozenset(
    {
        # ccTLD second levels where registrations happen one level down (Public Suffix List, ICANN section).
        *(f"{sld}.uk" for sld in ("co", "org", "ac", "gov", "net", "me", "ltd", "plc", "sch", "nhs", "police")),
        *(f"{sld}.au" for sld in ("com", "net", "org", "edu", "gov", "id", "asn")),
        *(f"{sld}.nz" for sld in ("co", "net", "org", "ac", "govt", "geek", "school")),
        *(f"{sld}.jp" for sld in ("co", "ne", "or", "ac", "go", "ad", "ed", "gr", "lg")),
        *(f"{sld}.kr" for sld in ("co", "or", "ne", "re", "ac", "go")),
        *(f"{sld}.za" for sld in ("co", "org", "gov", "net", "ac", "edu")),
        *(f"{sld}.in" for sld in ("co", "net", "org", "firm", "gen", "ind", "ac", "edu", "gov")),
        *(f"{sld}.il" for sld in ("co", "org", "ac", "gov", "net")),
        *(f"{sld}.id" for sld in ("co", "or", "ac", "go", "web")),
        *(f"{sld}.th" for sld in ("co", "in", "ac", "go", "or")),
        *(f"{sld}.br" for sld in ("com", "net", "org", "gov", "edu")),
        *(f"{sld}.cn" for sld in ("com", "net", "org", "gov", "edu")),
        *(f"com.{cc}" for cc in ("ar", "mx", "tr", "tw", "hk", "sg", "my", "ua", "pl", "co", "pe", "vn", "ph")),
        *(f"com.{cc}" for cc in ("pk", "ng", "eg", "sa", "bd", "np", "uy", "ve", "ec", "do", "gt", "py", "lb")),
        *(f"co.{cc}" for cc in ("ke", "tz", "ug", "zw", "ve", "cr", "ls", "bw", "ma")),
        # Hosting platforms (Public Suffix List, private section): each customer is its own "domain".
        "github.io", "gitlab.io", "herokuapp.com", "appspot.com", "azurewebsites.net", "cloudfront.net",
        "blogspot.com", "netlify.app", "vercel.app", "pages.dev", "workers.dev", "web.app", "firebaseapp.com",
    }
)  # fmt: skip


def base_domain(name: str) -> str:
    """Approximate registrable domain of a lowercased name: the label below the public suffix.

    A name whose last label cannot be a TLD (digits, other bytes: dnscat2 without a domain) maps to ``""``, so
    such names from one client share one bucket.
    """
    labels = name.split(".")
    tld = labels[-1]
    if not (tld.isalpha() and tld.isascii()) and not tld.startswith("xn--"):
        return ""
    if len(labels) <= 2:
        return name
    keep = 3 if f"{labels[-2]}.{tld}" in _TWO_LEVEL_SUFFIXES else 2
    return ".".join(labels[-keep:])


def entropy(text: str) -> float:
    """Shannon entropy in bits per character."""
    size = len(text)
    return -sum(n / size * math.log2(n / size) for n in Counter(text).values())


def looks_encoded(label: str, min_length: int = 16) -> bool:
    """Whether a label looks like encoded data (hex, base32, base64) rather than a word-built hostname.

    Judged on the longest run between ``-``/``_`` so structured names (``k8s-ingress-0a1b2c3d-1234``) are not
    taken for data; short runs are never judged (too few characters for the statistics to mean anything).
    """
    if label.startswith("xn--") or len(label) < min_length:
        return False
    run = max(label.replace("_", "-").split("-"), key=len)
    if len(run) < min_length:
        return False
    chars = set(run)
    if not chars <= _HOST_CHARS:
        return True
    digits = sum(ch in _DIGITS for ch in run)
    letters = len(run) - digits
    if chars <= _HEX and digits >= 2 and letters >= 2:
        return True
    if digits >= 2 and letters >= 2:
        return entropy(run) >= (3.3 if len(run) < 24 else 3.6)
    return len(run) >= 24 and entropy(run) >= 4.2


@dataclass(frozen=True, slots=True)
class DnsTunnelLimits:
    """Thresholds of `DnsTunnelTracker`; defaults reasoned in docs/dns-tunnel-thresholds.md."""

    min_encoded_label: int = 16
    """Shortest label judged as possibly encoded. Below this, base32/hex and words overlap too much."""
    exfil_chars: int = 80
    """One query whose encoded labels total this many characters is exfiltration on its own. A SHA-256 in hex
    (64, what reputation look-ups send) stays below; DNSExfiltrator and dnscat2 send 150-240 per query."""
    encoded_subdomains: int = 5
    """Distinct subdomains with an encoded label under one base domain."""
    odd_subdomains: int = 3
    """Distinct subdomains with bytes no hostname has (``=``, ``+``, ``/``, 8-bit: dns2tcp, iodine base128)."""
    rare_type_subdomains: int = 3
    """Distinct NULL or PRIVATE-type questions under one base domain (iodine's default)."""
    tunnel_type_subdomains: int = 20
    """Distinct subdomains needed before the TXT/CNAME/MX share is judged."""
    tunnel_type_share: float = 0.5
    """Share of TXT/CNAME/MX/SRV/KEY/NULL questions among those that makes the mix a tunnel's."""
    volume_subdomains: int = 30
    """Distinct subdomains needed before the mean subdomain length is judged."""
    volume_mean_length: int = 24
    """Mean subdomain length (characters left of the base domain) over those that makes a tunnel."""
    max_tracked: int = 4096
    """(client, base domain) pairs kept; the least recently seen is forgotten first."""
    max_seen: int = 64
    """Distinct (subdomain, type) keys remembered per pair; above every threshold, so counts stay exact."""


@dataclass(slots=True)
class _State:
    seen: set[int] = field(default_factory=set)
    encoded: int = 0
    odd: int = 0
    rare: int = 0
    tunnel_types: int = 0
    length_total: int = 0
    finding: Finding | None = None


class DnsTunnelTracker:
    """Watches the DNS messages of many clients; reports a base domain that carries a tunnel.

    `observe` returns a finding for the message that tips a (client, base domain) pair over a threshold and
    for every later message of that pair, so a resolver can refuse them all; otherwise ``None``.
    """

    __slots__ = ("limits", "_states")

    def __init__(self, limits: DnsTunnelLimits | None = None) -> None:
        self.limits = limits if limits is not None else DnsTunnelLimits()
        self._states: OrderedDict[tuple[str, str], _State] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def observe(self, client: str, message: bytes, *, tcp: bool = False) -> Finding | None:
        """Account one DNS message (query or response) seen for ``client``. ``tcp``: it has a length prefix."""
        if tcp:
            messages, _ = dns.split_tcp(message)
            result: Finding | None = None
            for one in messages:
                result = self.observe(client, one) or result
            return result
        parsed = dns.parse_partial(message)
        return None if parsed is None else self.observe_message(client, parsed)

    def observe_message(self, client: str, parsed: dns.Message) -> Finding | None:
        """`observe` for a message the caller has parsed already."""
        if parsed.opcode != 0:
            return None
        result = None
        for question in parsed.questions:
            result = self._question(client, question) or result
        return result

    def _question(self, client: str, question: dns.Question) -> Finding | None:
        name = question.name
        if not name or name.rsplit(".", 1)[-1] in _SKIP_TLDS:
            return None
        base = base_domain(name)
        key = (client, base)
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _State()
            if len(self._states) > self.limits.max_tracked:
                self._states.popitem(last=False)
        else:
            self._states.move_to_end(key)
        if state.finding is not None:
            return state.finding
        subdomain = name[: len(name) - len(base)].rstrip(".") if base else name
        seen_key = hash((subdomain, question.qtype))
        if seen_key in state.seen or len(state.seen) >= self.limits.max_seen:
            return None
        state.seen.add(seen_key)
        reason = self._account(state, subdomain, question.qtype)
        if reason:
            shown = f"{base or '(no domain)'}: {reason}; {name}"
            state.finding = Finding(Category.TUNNEL, reason.split(" ", 1)[0], DETECTOR, evidence(shown))
        return state.finding

    def _account(self, state: _State, subdomain: str, qtype: int) -> str:
        """Add one new (subdomain, type) to the pair's counters; name the protocol and signal that tipped."""
        limits = self.limits
        labels = subdomain.split(".") if subdomain else []
        encoded_chars = sum(len(label) for label in labels if looks_encoded(label, limits.min_encoded_label))
        if encoded_chars >= limits.exfil_chars:
            return f"dns-exfiltration ({encoded_chars} encoded characters in one query)"
        state.encoded += encoded_chars > 0
        state.odd += any(not set(label) <= _HOST_CHARS for label in labels)
        state.rare += qtype in _RARE_TYPES or 65280 <= qtype <= 65534
        state.tunnel_types += qtype in _TUNNEL_TYPES or 65280 <= qtype <= 65534
        state.length_total += len(subdomain)
        unique = len(state.seen)
        if state.odd >= limits.odd_subdomains:
            return f"dns-tunnel ({state.odd} subdomains with non-hostname bytes)"
        if state.rare >= limits.rare_type_subdomains:
            return f"dns-tunnel ({state.rare} NULL/PRIVATE questions)"
        if state.encoded >= limits.encoded_subdomains:
            return f"dns-tunnel ({state.encoded} subdomains with encoded labels)"
        if unique >= limits.tunnel_type_subdomains and state.tunnel_types >= limits.tunnel_type_share * unique:
            return f"dns-tunnel ({state.tunnel_types}/{unique} TXT/CNAME/MX/NULL questions)"
        if unique >= limits.volume_subdomains and state.length_total >= limits.volume_mean_length * unique:
            return f"dns-tunnel ({unique} subdomains, mean length {state.length_total // unique})"
        return ""
