"""`egress.detect.jsonmining` held to the four detectors it stands for (docs/scanner-hot-path.md, scan23): the
registry's detectors with it give, at every prefix of a flow grown as the engine grows it, what they gave with
`stratum`, `cryptonote`, `ethstratum` and `getwork` in its place, one after the other; on generated flows, on
every corpus flow, on UDP flows through `detect_pool`, and on views given both sides at once."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from egress.detect import datagrams, jsonmining
from egress.detect.base import Detector, Finding, FlowMeta, FlowView, Result, Transport
from egress.detect.engine import FlowInspector
from egress.detect.registry import MINING, build_detectors
from egress.policy.lists import load_name_lists
from tests.budget import examples
from tests.detect import seeds
from tests.detect.test_jsonrpc_sides import PIECES, interleaved

META = FlowMeta(Transport.TCP, "10.0.0.2", 40000, "198.51.100.7", 3333)
UDP_META = FlowMeta(Transport.UDP, "10.0.0.2", 40000, "198.51.100.7", 3333)
TCP = build_detectors(load_name_lists()).tcp

_PARAMS = {"login": "4" + "A" * 94, "pass": "x", "agent": "XMRig/6.21.0"}
LOGIN = json.dumps({"id": 1, "jsonrpc": "2.0", "method": "login", "params": _PARAMS}).encode() + b"\n"
NOTIFY = b'{"id":null,"method":"mining.notify","params":["1","00","00","00",[],"2","1d","5e",true]}\n'


def expanded(detectors: tuple[Detector, ...]) -> tuple[Detector, ...]:
    """``detectors`` with the four in `jsonmining.detect`'s place, as the registry listed them before."""
    out: list[Detector] = []
    for detector in detectors:
        out.extend(jsonmining.DETECTORS if detector is jsonmining.detect else (detector,))
    return tuple(out)


def in_turn(view: FlowView) -> Result:
    """The four asked one after the other as the engine asks them: the first finding ends it."""
    answers = []
    for detect in jsonmining.DETECTORS:
        result = detect(view)
        if isinstance(result, Finding):
            return result
        answers.append(result)
    assert len(set(answers)) == 1, answers  # None and MORE: the same for all four
    return answers[0]


def test_the_registry_runs_it_in_the_four_detectors_place() -> None:
    assert MINING[0] is jsonmining.detect and jsonmining.detect in TCP
    assert not set(jsonmining.DETECTORS) & set(TCP)
    assert expanded(TCP)[1:5] == jsonmining.DETECTORS  # after `upgrade`, before `stratum2`, as before


def grow(steps: list[tuple[bool, bytes]]) -> None:
    """Both inspectors (the registry's TCP detectors, and the same with the four) fed the same segments: the
    same finding, findings and state after each, and at the close; and the detector alone against the four on
    a view of both sides at once."""
    joined = FlowInspector(META, TCP)
    four = FlowInspector(META, expanded(TCP))
    alone, parts = FlowView(META), FlowView(META)
    for from_client, piece in steps:
        assert joined.feed_stream(from_client, piece) == four.feed_stream(from_client, piece)
        assert (joined.done, joined.findings, joined.unidentified) == (four.done, four.findings, four.unidentified)
        for view in (alone, parts):
            if from_client:
                view.client += piece
            else:
                view.server += piece
        assert jsonmining.detect(alone) == in_turn(parts)
        whole = (alone.client, alone.server)
        assert jsonmining.detect(FlowView(META, *whole)) == in_turn(FlowView(META, *whole))
    assert joined.close() == four.close()
    assert (joined.findings, joined.unidentified) == (four.findings, four.unidentified)
    alone.complete = parts.complete = True
    assert jsonmining.detect(alone) == in_turn(parts)


@settings(max_examples=examples(300), deadline=None)
@given(steps=st.lists(st.tuples(st.booleans(), st.sampled_from([*PIECES, LOGIN, NOTIFY, LOGIN[:40]])), max_size=14))
@example(steps=[(False, NOTIFY[:-2]), (True, LOGIN)])  # cryptonote on the client before stratum on the server
@example(steps=[(True, b"junk "), (False, NOTIFY)])  # stratum on the server's side
def test_a_grown_flow_is_judged_as_with_the_four(steps: list[tuple[bool, bytes]]) -> None:
    grow(steps)


def test_both_sides_at_once_are_asked_in_the_four_detectors_order() -> None:
    """Each matcher asks the client's side, then the server's, before the next matcher: stratum's server-side
    finding comes before cryptonote's client-side one."""
    found = jsonmining.detect(FlowView(META, LOGIN, NOTIFY))
    assert isinstance(found, Finding) and found == in_turn(FlowView(META, LOGIN, NOTIFY))
    assert found.detector == "stratum"


def test_the_corpus_flows_are_judged_as_with_the_four() -> None:
    for flow in (*seeds.STREAMS, *seeds.corpus_seeds().streams):
        client, server = flow.client[:6000], flow.server[:6000]
        for size in (37, 700):
            grow(interleaved(client, server, size))


def test_udp_flows_are_judged_as_with_the_four(monkeypatch: pytest.MonkeyPatch) -> None:
    """`detect_pool` runs `MINING` on a UDP flow's joined datagrams: with the four in its place, the same."""
    pool = datagrams.POOL
    for flow in (*seeds.DATAGRAMS, *seeds.corpus_seeds().datagrams):
        if flow.transport is not Transport.UDP:
            continue
        answers: list[list[Result]] = []
        for each in (pool, expanded(pool)):
            monkeypatch.setattr(datagrams, "POOL", each)
            view = FlowView(UDP_META)
            answers.append([])
            for from_client, payload in (*flow.datagrams, (True, LOGIN)):
                (view.client_datagrams if from_client else view.server_datagrams).append(payload)
                answers[-1].append(datagrams.detect_pool(view))
        assert answers[0] == answers[1], flow
