"""A verdict must not depend on how a flow's bytes are cut into segments (STYLE 2, docs/architecture.md).

For every stream detector on its own, and for the stream detectors together (the category the engine settles on),
any split of a flow's two directions into segments, fed in any interleaving, gives the same answer as each whole
direction fed at once. Inputs are the mutated real bytes of `tests.detect.test_registry`.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egress.detect import cryptonode, proxytunnel, ssh, stratum2
from egress.detect.base import Category, Detector, Finding, FlowMeta, Transport
from egress.detect.engine import FlowInspector
from egress.detect.registry import MINING
from tests.budget import examples
from tests.detect import seeds
from tests.detect.test_registry import DETECTORS, SEEDS, _interleave, mutated, segments

_PATIENT = (HealthCheck.too_slow, HealthCheck.filter_too_much)
SIZE_RULES = frozenset({stratum2.detect})
"""Detectors whose signature is the size of a whole message flight (Stratum v2's Noise handshake: exactly 64 bytes,
then 170 or 234): a byte stream without timing cannot say where a flight ends, so their answer may depend on the
cuts by nature. They are left out here; `tests/detect/test_stratum2.py` splits the plaintext SetupConnection."""
GREETING_RULES = frozenset({proxytunnel.detect})
"""A SOCKS5 greeting is judged the moment it is whole (on a live gateway no answer ever comes, and the record must
not wait for one), while a greeting followed in the same segment by bytes that start no request is no SOCKS: the
cut decides by design. `tests/detect/test_proxytunnel.py` splits real greetings and requests instead, and the
security suite plays curl's own (tests/security/test_unrecorded_proxy.py)."""
STREAM = tuple(detect for detect in DETECTORS.tcp if detect not in SIZE_RULES | GREETING_RULES)
PAYLOAD = tuple(d for d in (*MINING, cryptonode.detect, DETECTORS.tcp[-2], ssh.detect) if d not in SIZE_RULES)
"""The detectors whose answer must not depend on the order in which the two directions arrive either: the pool
and node detectors (a pool can speak first), the WebSocket unwrapper and SSH. The proxy-tunnel detector is
left out of that: a SOCKS or CONNECT reply is evidence only when it answers the client's request."""


def _whole(meta: FlowMeta, detectors: tuple[Detector, ...], client: bytes, server: bytes) -> Finding | None:
    inspector = FlowInspector(meta, detectors)
    inspector.feed_stream(True, client)
    inspector.feed_stream(False, server)
    return inspector.close()


def _cut(meta: FlowMeta, detectors: tuple[Detector, ...], events: list[tuple[bool, bytes]]) -> Finding | None:
    inspector = FlowInspector(meta, detectors)
    for from_client, data in events:
        inspector.feed_stream(from_client, data)
    return inspector.close()


@st.composite
def streams(draw: st.DrawFn) -> Case:
    seed = draw(SEEDS.filter(lambda seed: isinstance(seed, seeds.StreamSeed)))
    assert isinstance(seed, seeds.StreamSeed)
    client = draw(mutated(seed.client))
    server = draw(mutated(seed.server))
    one_byte = draw(st.integers(0, 7)) == 0
    parts_c = [client[i : i + 1] for i in range(len(client))] if one_byte else draw(segments(client))
    parts_s = draw(segments(server))
    ordered = [(True, part) for part in parts_c] + [(False, part) for part in parts_s]
    interleaved = draw(_interleave(list(parts_c), list(parts_s)))
    return Case(FlowMeta(Transport.TCP, "192.0.2.1", 40000, seed.dst, seed.dport), client, server, ordered, interleaved)


@dataclass(frozen=True, slots=True)
class Case:
    meta: FlowMeta
    client: bytes
    server: bytes
    ordered: list[tuple[bool, bytes]]
    """Each direction cut into segments: the client's first, then the server's."""
    interleaved: list[tuple[bool, bytes]]
    """The same segments in an order that mixes the directions (the server may speak first)."""


def _category(found: Finding | None) -> Category | None:
    return found.category if found is not None else None


@settings(max_examples=examples(150), deadline=None, suppress_health_check=_PATIENT)
@given(streams())
def test_each_detector_ignores_segmentation(case: Case) -> None:
    """The same finding, evidence included, whatever the cuts; the same category whatever the interleaving (the
    evidence may then come from the direction whose message was whole first)."""
    for detect in STREAM:
        whole = _whole(case.meta, (detect,), case.client, case.server)
        assert _cut(case.meta, (detect,), case.ordered) == whole, detect
        if detect in PAYLOAD:
            assert _category(_cut(case.meta, (detect,), case.interleaved)) == _category(whole), detect


def _first_decision(
    meta: FlowMeta, detectors: tuple[Detector, ...], events: list[tuple[bool, bytes]]
) -> tuple[Category | None, bytes, bytes]:
    """The category of the first finding while the events are fed (else at the close), and the bytes of each
    direction fed until then."""
    inspector = FlowInspector(meta, detectors)
    client, server = bytearray(), bytearray()
    for from_client, data in events:
        (client if from_client else server).extend(data)
        if (found := inspector.feed_stream(from_client, data)) is not None:
            return found.category, bytes(client), bytes(server)
    return _category(inspector.close()), bytes(client), bytes(server)


@settings(max_examples=examples(100), deadline=None, suppress_health_check=_PATIENT)
@given(streams())
def test_the_category_ignores_segmentation(case: Case) -> None:
    """All stream detectors together: mining wins whenever its evidence appears, in any order or segmenting.

    Inline, the first decisive evidence decides: where one direction's tunnel evidence is whole before the other
    direction's mining evidence has arrived, the flow is blocked as a tunnel then and there (waiting for a mining
    message that may never come would let the tunnel's bytes through). So the cut flow is compared with the same
    bytes fed whole, as far as the cut flow had got when it decided (found by hypothesis: a WebSocket whose
    client's first binary message is random, and whose server pushes a pool's job further on)."""
    category, client, server = _first_decision(case.meta, STREAM, case.ordered)
    whole, _, _ = _first_decision(case.meta, STREAM, [(True, client), (False, server)])
    assert category == whole
    if (client, server) == (case.client, case.server):
        assert category == _category(_whole(case.meta, STREAM, case.client, case.server))
    assert _category(_cut(case.meta, PAYLOAD, case.interleaved)) == _category(
        _whole(case.meta, PAYLOAD, case.client, case.server)
    )
