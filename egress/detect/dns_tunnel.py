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

import itertools
import math
import re
import time
from collections import Counter
from collections.abc import Callable
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
_CONTENT_ID_LABELS = frozenset({"ipfs", "ipns"})
"""IPFS subdomain gateways put a content id (base32, 59 characters for CIDv1) before one of these labels."""
_NON_PRINTABLE = re.compile(r"\\(?:0[0-2][0-9]|03[01]|12[7-9]|1[3-9][0-9]|2[0-5][0-9])")
"""A ``\\DDD`` escape of a control byte (0-31) or of a byte past ASCII (127-255) in a name's presentation form
(`egress.detect.dns.name_text`): no hostname, IDN (``xn--``) or service name holds one."""
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


QuestionKey = tuple[str, str, int]
"""A question as the tracker keys it: base domain, subdomain, and the hash it remembers (subdomain, type) by."""


def question_key(name: str, qtype: int) -> QuestionKey | None:
    """How the tracker keys a question for ``name`` (lowercased presentation form) and ``qtype``; None for a name it
    does not track (empty, or under ``arpa`` or ``local``)."""
    if not name or name.rsplit(".", 1)[-1] in _SKIP_TLDS:
        return None
    base = base_domain(name)
    subdomain = name[: len(name) - len(base)].rstrip(".") if base else name
    return base, subdomain, hash((subdomain, qtype))


@dataclass(frozen=True, slots=True)
class DnsTunnelLimits:
    """Thresholds of `DnsTunnelTracker`; defaults reasoned in docs/dns-tunnel-thresholds.md."""

    min_encoded_label: int = 16
    """Shortest label judged as possibly encoded. Below this, base32/hex and words overlap too much."""
    exfil_chars: int = 80
    """One query whose encoded labels total this many characters is exfiltration on its own. A SHA-256 in hex
    (64, what reputation look-ups send) stays below; DNSExfiltrator and dnscat2 send 150-240 per query."""
    exfil_label: int = 48
    """One encoded label this long is exfiltration on its own (a secret or a file chunk in one query). A SHA-1 in
    hex (40, Team Cymru's hash registry), an ACM validation label (``_`` + 32 hex) and CDN, ELB and DKIM names stay
    below or are not encoded (docs/dns-tunnel-thresholds.md); IPFS content ids (``<cid>.ipfs.<gateway>``) are
    skipped."""
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
    hold: float = 3600.0
    """Seconds a base domain found tunnelling stays found: every question under it returns the finding (the
    resolver refuses it) until the hold ends; then its counters start afresh."""
    half_life: float = 6 * 3600.0
    """Seconds after which a pair's counters count half: totals over hours, so one query every few seconds or
    minutes still adds up, while a domain looked up now and then all day is not judged on its whole history."""
    max_tracked: int = 4096
    """(client, base domain) pairs kept. Past it the coldest (furthest from any threshold) are forgotten, never
    one that is held: flooding with fresh domains cannot reset a domain on its way to a finding."""
    recent_keys: int = 256
    """(subdomain, type) keys remembered per pair to count repeats once. A key older than that counts again if it
    returns: a bounded memory can only make the counts higher, never stop them."""


def _reached(count: float, limit: float) -> bool:
    """A decayed count reaches a whole-number threshold when it rounds to it: three NULL questions two seconds
    apart count 2.9997, and are three."""
    return count + 0.5 >= limit


@dataclass(slots=True)
class _State:
    recent: dict[int, None] = field(default_factory=dict)
    """Recently seen (subdomain, type) hashes in insertion order (oldest first)."""
    unique: float = 0.0
    encoded: float = 0.0
    odd: float = 0.0
    rare: float = 0.0
    tunnel_types: float = 0.0
    length_total: float = 0.0
    updated: float = 0.0
    """When the counters were last decayed (the tracker's clock)."""
    finding: Finding | None = None
    held_until: float = 0.0
    refused: int = 0
    """Questions answered with the finding during the hold (the one that tripped it not counted)."""

    def decay(self, now: float, half_life: float) -> None:
        if now <= self.updated:
            return
        factor = 0.5 ** ((now - self.updated) / half_life)
        self.unique *= factor
        self.encoded *= factor
        self.odd *= factor
        self.rare *= factor
        self.tunnel_types *= factor
        self.length_total *= factor
        self.updated = now

    def heat(self, limits: DnsTunnelLimits) -> float:
        """How far this pair is towards its nearest threshold (1.0: there); held pairs are hottest."""
        if self.finding is not None:
            return math.inf
        return max(
            self.encoded / limits.encoded_subdomains,
            self.odd / limits.odd_subdomains,
            self.rare / limits.rare_type_subdomains,
            self.unique / max(limits.tunnel_type_subdomains, limits.volume_subdomains),
        )


class DnsTunnelTracker:
    """Watches the DNS messages of many clients; reports a base domain that carries a tunnel.

    `observe` returns a finding for the message that tips a (client, base domain) pair over a threshold and,
    for `DnsTunnelLimits.hold` seconds, for every later question under that pair, so a resolver refuses them all
    (`held` says how many it did). A client is whatever the caller keys state by: the resolver passes the
    sandbox (an agent may change its address), the capture scanner the source address. ``clock`` gives seconds
    (the resolver's clock; the scanner passes capture time through ``now``).
    """

    __slots__ = ("_clock", "_states", "limits")

    def __init__(self, limits: DnsTunnelLimits | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits if limits is not None else DnsTunnelLimits()
        self._clock = clock
        self._states: dict[tuple[str, str], _State] = {}

    def __len__(self) -> int:
        return len(self._states)

    def holding(self, client: str, name: str, now: float | None = None) -> str | None:
        """The base domain of ``name`` if it is held for ``client`` right now, else ``None``."""
        base = base_domain(name)
        state = self._states.get((client, base))
        moment = self._clock() if now is None else now
        return base if state is not None and state.finding is not None and moment < state.held_until else None

    def held(self, client: str, base: str) -> int:
        """Questions refused under ``base`` for ``client`` during its current hold (0: not held)."""
        state = self._states.get((client, base))
        return state.refused if state is not None and state.finding is not None else 0

    def observe(self, client: str, message: bytes, *, tcp: bool = False, now: float | None = None) -> Finding | None:
        """Account one DNS message (query or response) seen for ``client``. ``tcp``: it has a length prefix."""
        if tcp:
            messages, _ = dns.split_tcp(message)
            result: Finding | None = None
            for one in messages:
                result = self.observe(client, one, now=now) or result
            return result
        parsed = dns.parse_partial(message)
        return None if parsed is None else self.observe_message(client, parsed, now=now)

    def observe_message(self, client: str, parsed: dns.Message, *, now: float | None = None) -> Finding | None:
        """`observe` for a message the caller has parsed already."""
        if parsed.opcode != 0:
            return None
        moment = self._clock() if now is None else now
        result = None
        for question in parsed.questions:
            result = self._question(client, question, moment) or result
        return result

    def _question(self, client: str, question: dns.Question, now: float) -> Finding | None:
        name = question.name
        keyed = question_key(name, question.qtype)
        if keyed is None:
            return None
        base, subdomain, seen_key = keyed
        state = self._state((client, base), now)
        if state.finding is not None:
            if now < state.held_until:
                state.refused += 1
                return state.finding
            state = self._states[client, base] = _State(updated=now)  # the hold is over: judge afresh
        state.decay(now, self.limits.half_life)
        if seen_key in state.recent:
            return None
        state.recent[seen_key] = None
        if len(state.recent) > self.limits.recent_keys:
            del state.recent[next(iter(state.recent))]
        reason = self._account(state, subdomain, question.qtype)
        if reason:
            shown = f"{base or '(no domain)'}: {reason}; {name}"
            state.finding = Finding(Category.TUNNEL, reason.split(" ", 1)[0], DETECTOR, evidence(shown))
            state.held_until = now + self.limits.hold
        return state.finding

    def repeat(self, client: str, keyed: QuestionKey | None, now: float | None = None) -> bool:
        """Account a question `observe_message` would count as a repeat, the way it would: True when ``client``'s
        pair for it is tracked, not found (held or ended), and remembers this (subdomain, type), after decaying
        the pair's counters as `observe_message` does (it changes nothing else and finds nothing then); False,
        with nothing changed, when the caller must `observe_message` the question instead. ``keyed``: its
        `question_key` (None: a name the tracker skips, always a repeat). The resolver's fast path
        (`egress.dnsserver.fast`) calls this instead of parsing the query again."""
        if keyed is None:
            return True
        state = self._states.get((client, keyed[0]))
        if state is None or state.finding is not None or keyed[2] not in state.recent:
            return False
        state.decay(self._clock() if now is None else now, self.limits.half_life)
        return True

    def _state(self, key: tuple[str, str], now: float) -> _State:
        state = self._states.get(key)
        if state is None:
            if len(self._states) >= self.limits.max_tracked:
                self._evict(now)
            state = self._states[key] = _State(updated=now)
        return state

    def _evict(self, now: float) -> None:
        """Forget the coldest eighth of the pairs (ended holds first), so eviction costs O(1) per new pair on
        average. A held pair is never forgotten; if every pair is held the table grows past its bound rather
        than let a tunnel through (each held pair took a finding to get there)."""
        for state in self._states.values():
            state.decay(now, self.limits.half_life)
        candidates = [
            (0.0 if state.finding is not None else state.heat(self.limits), key)
            for key, state in self._states.items()
            if state.finding is None or state.held_until <= now
        ]
        candidates.sort(key=lambda item: item[0])
        for _, key in candidates[: max(1, len(self._states) // 8)]:
            del self._states[key]

    def _one_query(self, state: _State, labels: list[str]) -> str:
        """Exfiltration shown by one query alone: many encoded characters, one long encoded label, or a label
        with non-printable bytes; ``""`` if none. The last two are named ``dns-exfiltration`` when the query is the
        first under its base domain (a secret sent in one go), ``dns-tunnel`` when others came before it (iodine and
        dns2tcp send their long labels after a handshake)."""
        limits = self.limits
        encoded = [label for label in labels if looks_encoded(label, limits.min_encoded_label)]
        encoded_chars = sum(map(len, encoded))
        if encoded_chars >= limits.exfil_chars:
            return f"dns-exfiltration ({encoded_chars} encoded characters in one query)"
        kind = "dns-exfiltration" if state.unique < 0.5 else "dns-tunnel"
        after = dict(itertools.pairwise(labels))
        for label in encoded:
            if len(label) >= limits.exfil_label and after.get(label) not in _CONTENT_ID_LABELS:
                return f"{kind} (a {len(label)}-character encoded label in one query)"
        if any(_NON_PRINTABLE.search(label) for label in labels):
            return f"{kind} (a label with non-printable bytes in one query)"
        return ""

    def _account(self, state: _State, subdomain: str, qtype: int) -> str:
        """Add one new (subdomain, type) to the pair's counters; name the protocol and signal that tipped."""
        limits = self.limits
        labels = subdomain.split(".") if subdomain else []
        alone = self._one_query(state, labels)
        if alone:
            return alone
        encoded_chars = sum(len(label) for label in labels if looks_encoded(label, limits.min_encoded_label))
        state.unique += 1
        state.encoded += encoded_chars > 0
        state.odd += any(not set(label) <= _HOST_CHARS for label in labels)
        state.rare += qtype in _RARE_TYPES or 65280 <= qtype <= 65534
        state.tunnel_types += qtype in _TUNNEL_TYPES or 65280 <= qtype <= 65534
        state.length_total += len(subdomain)
        unique = state.unique
        if _reached(state.odd, limits.odd_subdomains):
            return f"dns-tunnel ({state.odd:.0f} subdomains with non-hostname bytes)"
        if _reached(state.rare, limits.rare_type_subdomains):
            return f"dns-tunnel ({state.rare:.0f} NULL/PRIVATE questions)"
        if _reached(state.encoded, limits.encoded_subdomains):
            return f"dns-tunnel ({state.encoded:.0f} subdomains with encoded labels)"
        if _reached(unique, limits.tunnel_type_subdomains) and state.tunnel_types >= limits.tunnel_type_share * unique:
            return f"dns-tunnel ({state.tunnel_types:.0f}/{unique:.0f} TXT/CNAME/MX/NULL questions)"
        if _reached(unique, limits.volume_subdomains) and state.length_total >= limits.volume_mean_length * unique:
            return f"dns-tunnel ({unique:.0f} subdomains, mean length {state.length_total / unique:.0f})"
        return ""
