"""Properties of every detector in the registry, fed through the engine with mutated real bytes.

The inputs start from real flows (the fixtures of tests/detect and the first flows of the corpus's captures, see
`tests.detect.seeds`); hypothesis flips, inserts, deletes and duplicates bytes, truncates, and splices in other
fixtures, then cuts each direction into segments fed in an interleaved order, so every detector sees growing
prefixes as it does in the proxy and the scanner. Every detector of the explicit tuples runs on every transport
(a stream seed is also fed as datagrams, and datagrams as a stream), and the DNS observer gets mutated messages.

What must hold (egress.detect.base states the contract):

- a detector never raises, and answers `MORE`, ``None`` or a `Finding`;
- a finding's category is one of `Category` and the one its detector reports; its detector and protocol labels are
  from the known set below; its evidence is printable, on one line and at most `EVIDENCE_MAX` characters;
- the engine asks a detector again only after `MORE`, always with the same or a longer prefix, and a decided flow
  stays decided: later bytes and ``close`` return the same finding or, before the flow is done, a higher-ranked
  one (`egress.detect.engine.RANK`);
- the DNS observer reports each (client, finding) once.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egress.detect import (
    binrpc,
    cryptonode,
    cryptonote,
    dns_tunnel,
    encrypted,
    ethstratum,
    getwork,
    icmp_tunnel,
    names,
    proxytunnel,
    ssh,
    stratum,
    stratum2,
    tor,
    upgrade,
    vpn,
    wallet,
    websocket,
    xmlrpc,
)
from egress.detect.base import EVIDENCE_MAX, MORE, Category, Detector, Finding, FlowMeta, FlowView, Result, Transport
from egress.detect.engine import RANK, FlowInspector
from egress.detect.registry import build_detectors
from tests.budget import examples
from tests.detect import seeds
from tests.detect.test_dns_tunnel import iodine_like
from tests.lists import shipped_list_items, shipped_lists

LISTS = shipped_list_items()
DETECTORS = build_detectors(shipped_lists())
EVERY_DETECTOR: tuple[Detector, ...] = tuple(
    {id(d): d for d in (*DETECTORS.tcp, *DETECTORS.udp, *DETECTORS.icmp)}.values()
)

_LISTED = frozenset((item.category, item.protocol) for item in LISTS)
_MINED = frozenset({Category.MINING})
_NODE = frozenset({Category.CRYPTO_NODE})
_TUNNEL = frozenset({Category.TUNNEL})
LABELS: dict[str, tuple[frozenset[Category], frozenset[str]]] = {
    stratum.NAME: (_MINED, frozenset({"stratum-v1", "ethereum-stratum"})),
    cryptonote.NAME: (_MINED, frozenset({cryptonote.PROTOCOL})),
    ethstratum.NAME: (_MINED, frozenset({"ethereum-stratum", "ethereum-getwork-http"})),
    getwork.NAME: (_MINED, frozenset({"mining-http-header", "getwork", "getblocktemplate"})),
    stratum2.NAME: (_MINED, frozenset({"stratum-v2", "stratum-v2-noise"})),
    cryptonode.NAME: (
        _NODE,
        frozenset({f"{network}-p2p" for network in cryptonode.BITCOIN_MAGICS.values()})
        | {"monero-levin", "ethereum-rpc", "bitcoin-rpc", "monero-rpc", "nano-rpc"},
    ),
    binrpc.NAME: (_MINED, frozenset({binrpc.PROTOCOL})),
    xmlrpc.NAME: (_MINED, frozenset({xmlrpc.PROTOCOL})),
    wallet.NAME: (_MINED | _TUNNEL, frozenset({wallet.PROTOCOL, "unidentified"})),
    ssh.NAME: (_TUNNEL, frozenset({"ssh-nonstandard-port"})),
    proxytunnel.NAME: (_TUNNEL, frozenset({"socks4", "socks5", "http-connect"})),
    tor.NAME: (_TUNNEL, frozenset({"tor"})),
    vpn.NAME: (_TUNNEL, frozenset({"openvpn", "wireguard", "ipsec-ike"})),
    websocket.NAME: (_TUNNEL, frozenset({"websocket-tunnel"})),
    encrypted.NAME: (_TUNNEL, frozenset({encrypted.STREAM_PROTOCOL, encrypted.PROTOCOL})),
    upgrade.NAME: (_TUNNEL, frozenset({upgrade.PROTOCOL})),
    names.DETECTOR: (
        frozenset(category for category, _ in _LISTED) | _TUNNEL,
        frozenset(protocol for _, protocol in _LISTED) | {"dot", "doh", "doq"},
    ),
    icmp_tunnel.DETECTOR: (
        _TUNNEL,
        frozenset({"icmp-ptunnel", "icmp-hans", "ip-over-icmp", "icmp-tunnel", "icmp-covert"}),
    ),
    dns_tunnel.DETECTOR: (_TUNNEL, frozenset({"dns-tunnel", "dns-exfiltration"})),
    "dns-names": (frozenset(category for category, _ in _LISTED), frozenset(protocol for _, protocol in _LISTED)),
}
"""Detector label → (the categories it reports, its protocol labels): the known set a finding's labels are from."""
_INNER = frozenset(
    {stratum.NAME, cryptonote.NAME, ethstratum.NAME, getwork.NAME, stratum2.NAME, cryptonode.NAME, wallet.NAME}
)
for _name in _INNER:  # the WebSocket detector reports what its inner detectors find inside the frames
    LABELS[f"{websocket.NAME}+{_name}"] = LABELS[_name]


def check_finding(finding: Finding) -> None:
    assert type(finding) is Finding
    assert isinstance(finding.category, Category)
    assert finding.detector in LABELS, finding
    categories, protocols = LABELS[finding.detector]
    assert finding.category in categories, finding
    assert finding.protocol in protocols, finding
    for label in (finding.detector, finding.protocol):
        assert label and label.isascii() and label.isprintable() and " " not in label
    text = finding.evidence
    assert len(text) <= EVIDENCE_MAX, finding
    assert all(32 <= ord(ch) < 127 for ch in text), finding
    assert text == " ".join(text.split()), finding  # one line, no runs of blanks


def check_answer(answer: Result) -> None:
    assert answer is MORE or answer is None or isinstance(answer, Finding), answer
    if isinstance(answer, Finding):
        check_finding(answer)


class Probe:
    """Wraps a detector: checks each answer and records the prefix sizes the engine showed it."""

    def __init__(self, detect: Detector) -> None:
        self.detect = detect
        self.answers: list[Result] = []
        self.sizes: list[tuple[int, int, int, int]] = []

    def __call__(self, view: FlowView) -> Result:
        answer = self.detect(view)
        check_answer(answer)
        self.answers.append(answer)
        self.sizes.append((len(view.client), len(view.server), len(view.client_datagrams), len(view.server_datagrams)))
        return answer


# --- inputs ---

_INTERESTING = (b"\x00", b"\xff", b"\x7f\x80", b"\r\n", b"\n", b"\r\n\r\n", b"{", b"}", b"[", b'"', b"\\", b":", b",")
_OPS = ("flip", "insert", "delete", "duplicate", "truncate", "splice")
_PORT = st.sampled_from((22, 53, 80, 443, 500, 853, 1080, 1194, 3333, 4500, 8080))
_DST = st.sampled_from((seeds.OTHER_DST, seeds.DOH_DST, "2001:db8::7"))
_TRANSPORT = st.sampled_from(Transport)
_MOSTLY = st.integers(0, 3).map(bool)
_ICMP_TYPE = st.sampled_from((0, 3, 8, 11))


def _pool() -> Sequence[bytes]:
    corpus = seeds.corpus_seeds()
    pieces = [side for seed in (*seeds.STREAMS, *corpus.streams) for side in (seed.client, seed.server)]
    pieces += [payload for seed in (*seeds.DATAGRAMS, *corpus.datagrams) for _, payload in seed.datagrams]
    return [piece for piece in pieces if piece]


# Strategies built once (drawn lazily where they need the corpus): building one per draw costs more than the
# detectors do.
POOL = st.deferred(lambda: st.sampled_from(_pool()))
"""Any fixture's bytes, to splice in."""


def _seeds() -> list[seeds.StreamSeed | seeds.DatagramSeed]:
    corpus = seeds.corpus_seeds()
    return [*seeds.STREAMS, *seeds.DATAGRAMS, *corpus.streams, *corpus.datagrams]


SEEDS: st.SearchStrategy[seeds.StreamSeed | seeds.DatagramSeed] = st.deferred(lambda: st.sampled_from(_seeds()))
DNS_SEEDS = st.deferred(lambda: st.sampled_from((*seeds.DNS_MESSAGES, *seeds.corpus_seeds().dns)))
_OP = st.sampled_from(_OPS)
_COUNT = st.integers(0, 4)
_XOR = st.integers(1, 255)
_INSERT = st.sampled_from(_INTERESTING) | st.binary(min_size=1, max_size=8)
_RUN = st.integers(1, 32)
_SPAN = st.integers(1, 64)


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` after up to four mutations."""
    out = bytearray(data)
    for _ in range(draw(_COUNT)):
        op = draw(_OP)
        size = len(out)
        at = draw(st.integers(0, size))
        if op == "flip" and at < size:
            out[at] ^= draw(_XOR)
        elif op == "insert":
            out[at:at] = draw(_INSERT)
        elif op == "delete":
            del out[at : at + draw(_RUN)]
        elif op == "duplicate":
            end = min(size, at + draw(_SPAN))
            out[end:end] = out[at:end]
        elif op == "truncate":
            del out[at:]
        elif op == "splice":
            other = draw(POOL)
            out[at:] = other[draw(st.integers(0, len(other))) :]
    return bytes(out)


@st.composite
def segments(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at up to six places (message boundaries are arbitrary)."""
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=6))))
    bounds = [0, *(cut for cut in cuts if cut < len(data)), len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds) if end > start]


@dataclass(frozen=True, slots=True)
class Case:
    meta: FlowMeta
    events: tuple[tuple[bool, bytes, int | None], ...]
    """(from the client, bytes, ICMP type) in the order fed: stream segments for TCP, datagrams otherwise."""


@st.composite
def _interleave(draw: st.DrawFn, client: list[bytes], server: list[bytes]) -> list[tuple[bool, bytes]]:
    events: list[tuple[bool, bytes]] = []
    while client or server:
        from_client = bool(client) and (not server or draw(st.booleans()))
        events.append((from_client, (client if from_client else server).pop(0)))
    return events


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """A mutated seed, fed on its own transport most of the time and on any transport otherwise."""
    seed = draw(SEEDS)
    own = Transport.TCP if isinstance(seed, seeds.StreamSeed) else seed.transport
    # The seed's own transport, port and address most of the time, since detectors judge by them.
    transport = own if draw(_MOSTLY) else draw(_TRANSPORT)
    dport = seed.dport if draw(_MOSTLY) else draw(_PORT)
    dst = seed.dst if draw(_MOSTLY) else draw(_DST)
    if isinstance(seed, seeds.StreamSeed):
        client = draw(segments(draw(mutated(seed.client))))
        server = draw(segments(draw(mutated(seed.server))))
        pieces = draw(_interleave(client, server))
        types = [8 if from_client else 0 for from_client, _ in pieces]
    else:
        grams = list(seed.datagrams)
        change = draw(st.booleans())
        if change and grams:  # a datagram repeated or dropped
            index = draw(st.integers(0, len(grams) - 1))
            if draw(st.booleans()):
                grams.insert(index, grams[index])
            else:
                del grams[index]
        pieces = [(from_client, draw(mutated(payload))) for from_client, payload in grams]
        types = list(seed.icmp_types) or [8 if from_client else 0 for from_client, _ in pieces]
        types = (types + [8] * len(pieces))[: len(pieces)]
        if draw(st.booleans()):
            types = [draw(_ICMP_TYPE) for _ in pieces]
    events = tuple(
        (from_client, data, icmp_type if transport is Transport.ICMP else None)
        for (from_client, data), icmp_type in zip(pieces, types, strict=True)
    )
    return Case(FlowMeta(transport, "192.0.2.1", 40000, dst, dport), events)


def feed(inspector: FlowInspector, case: Case) -> list[Finding | None]:
    """Feed the case the way the engine's callers do; return what each feed returned, then what close returned."""
    returned: list[Finding | None] = []
    for from_client, data, icmp_type in case.events:
        if case.meta.transport is Transport.TCP:
            returned.append(inspector.feed_stream(from_client, data))
        else:
            returned.append(inspector.feed_datagram(from_client, data, icmp_type))
    returned.append(inspector.close())
    return returned


def check_decided_stays_decided(inspector: FlowInspector, returned: list[Finding | None]) -> None:
    """Once a finding is made the flow keeps one; it is replaced only by a higher-ranked one (mining over tunnel
    over crypto-node), and a mining finding is never replaced."""
    assert inspector.done
    first = next((index for index, found in enumerate(returned) if found is not None), None)
    if first is not None:
        kept = returned[first:]
        assert all(found is not None for found in kept)
        for before, after in itertools.pairwise(kept):
            assert before is not None and after is not None
            assert after == before or RANK[after.category] > RANK[before.category]
        assert inspector.finding == returned[-1]
    else:
        assert inspector.finding is None


# --- the properties ---

# No deadline and no "too slow" health check: the suite must pass on a loaded or single-core machine.
_PATIENT = (HealthCheck.too_slow,)


@settings(max_examples=examples(200), deadline=None, suppress_health_check=_PATIENT)
@given(cases())
def test_each_detector_through_the_engine(case: Case) -> None:
    for detect in EVERY_DETECTOR:
        probe = Probe(detect)
        inspector = FlowInspector(case.meta, (probe,))
        returned = feed(inspector, case)
        check_decided_stays_decided(inspector, returned)
        # Asked again only after MORE, and always about the same or a longer prefix.
        assert all(answer is MORE for answer in probe.answers[:-1])
        for before, after in itertools.pairwise(probe.sizes):
            assert all(a <= b for a, b in zip(before, after, strict=True))
        last = probe.answers[-1] if probe.answers else None
        assert inspector.finding == (last if isinstance(last, Finding) else None)


@settings(max_examples=examples(100), deadline=None, suppress_health_check=_PATIENT)
@given(cases())
def test_each_transport_s_detectors_together(case: Case) -> None:
    inspector = FlowInspector(case.meta, tuple(Probe(d) for d in DETECTORS.for_transport(case.meta.transport)))
    returned = feed(inspector, case)
    check_decided_stays_decided(inspector, returned)
    # Feeding a decided flow more bytes changes nothing and does not ask the detectors again.
    for from_client, data, icmp_type in case.events:
        if case.meta.transport is Transport.TCP:
            assert inspector.feed_stream(from_client, data) == inspector.finding
        else:
            assert inspector.feed_datagram(from_client, data, icmp_type) == inspector.finding
    assert inspector.close() == returned[-1]


@settings(max_examples=examples(100), deadline=None, suppress_health_check=_PATIENT)
@given(cases(), st.booleans())
def test_each_detector_on_a_whole_view(case: Case, complete: bool) -> None:
    """Callers that hold a whole view (the gate's name check) call a detector directly, complete or not."""
    client = b"".join(data for from_client, data, _ in case.events if from_client)
    server = b"".join(data for from_client, data, _ in case.events if not from_client)
    stream = FlowView(case.meta, client, server, complete=complete)
    grams = FlowView(
        case.meta,
        client_datagrams=[data for from_client, data, _ in case.events if from_client],
        server_datagrams=[data for from_client, data, _ in case.events if not from_client],
        icmp_types=[icmp_type or 0 for _, _, icmp_type in case.events],
        complete=complete,
    )
    for detect in EVERY_DETECTOR:
        check_answer(detect(stream))
        check_answer(detect(grams))


@st.composite
def dns_messages(draw: st.DrawFn) -> bytes:
    return draw(mutated(draw(DNS_SEEDS)))


@settings(max_examples=examples(100), deadline=None, suppress_health_check=_PATIENT)
@given(st.lists(st.tuples(st.sampled_from(("192.0.2.1", "192.0.2.2", "2001:db8::1")), dns_messages()), max_size=40))
def test_dns_observer(messages: list[tuple[str, bytes]]) -> None:
    observer = DETECTORS.dns_tracker()
    reported: set[tuple[str, Finding]] = set()
    for at, (client, message) in enumerate(messages):
        found = observer.observe(client, message, 1_700_000_000.0 + at)
        if found is not None:
            check_finding(found)
            assert (client, found) not in reported
            reported.add((client, found))


def test_the_dns_observer_decays_by_the_time_it_is_given_not_the_wall_clock() -> None:
    """The scanner gives each message its capture time: three iodine-like NULL questions a second apart are a
    tunnel, the same three half a day apart are not (the counters' half-life is hours), however fast the scan runs."""

    def found(spacing: float) -> list[Finding]:
        observer = DETECTORS.dns_tracker()
        results = (observer.observe("192.0.2.1", iodine_like(n), 1_700_000_000.0 + n * spacing) for n in range(3))
        return [result for result in results if result is not None]

    assert [finding.protocol for finding in found(1.0)] == ["dns-tunnel"]
    assert found(12 * 3600.0) == []
