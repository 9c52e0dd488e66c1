"""`jsonrpc.drive_sides` held to the work it saves (docs/scanner-hot-path.md, scan16): a detector that skips a side
it already answered None for gives, at every prefix of a flow grown segment by segment (as the engine grows it),
what `drive` of both sides gives on a fresh view of the same bytes, on generated flows and on the corpus's."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from egress.detect import cryptonode, cryptonote, ethstratum, getwork, jsonrpc, stratum
from egress.detect.base import FlowMeta, FlowView, Result, Transport
from tests.budget import examples
from tests.detect import seeds

META = FlowMeta(Transport.TCP, "10.0.0.2", 40000, "198.51.100.7", 3333)

SideMatch = Callable[[jsonrpc.Payload], object]
DETECTORS: list[tuple[Callable[[FlowView], Result], SideMatch, bool]] = [
    (stratum.detect, stratum._match, False),
    (cryptonote.detect, cryptonote._match, False),
    (ethstratum.detect, ethstratum._match, False),
    (getwork.detect, getwork._match, False),
    (cryptonode.detect, cryptonode._match, True),
]
IDS = ["stratum", "cryptonote", "ethstratum", "getwork", "cryptonode"]

PIECES = [
    b'{"id":1,"method":"mining.subscribe","params":[]}\n', b'{"id":2,"method":"login","params":{"login":"x"}}\n',
    b'{"id":1,"result":{"job":{"job_id":"1","blob":"00","target":"ff"}}}\n', b'{"method":"getblocktemplate"}\n',
    b'{"jsonrpc":"2.0","method":"eth_submitWork","params":[]}\n', b'{"method":"getblockcount","id":1}\n',
    b'{"id":3,"method":"eth_getWork"}', b'"midstate":"00","hash1":"00"', b"POST / HTTP/1.1\r\n",
    b"Content-Length: 20\r\n", b"X-Mining-Extensions: midstate\r\n", b"HTTP/1.1 200 OK\r\n", b"\r\n", b"{", b"}",
    b"[", b"\n", b"\x00\x01\x02\xff", b"junk ", b"\\u007b", b"\x16\x03\x01\x00\x05hello", b"SSH-2.0-x\r\n",
]  # fmt: skip


def plain(view: FlowView, match: SideMatch, client_only: bool) -> Result:
    """What the detector's `drive` answered before: both sides asked every time, on a fresh view."""
    fresh = FlowView(META, client=view.client, server=view.server, complete=view.complete)
    if client_only:
        return jsonrpc.drive(fresh, lambda client, server: match(client))  # type: ignore[arg-type,return-value]
    return jsonrpc.drive(fresh, lambda client, server: match(client) or match(server))  # type: ignore[arg-type,return-value]


def check(
    detect: Callable[[FlowView], Result], match: SideMatch, client_only: bool, steps: list[tuple[bool, bytes]]
) -> None:
    view = FlowView(META)
    for from_client, piece in steps:
        if from_client:
            view.client += piece
        else:
            view.server += piece
        got = detect(view)
        if detect is not cryptonode.detect:  # cryptonode reads binary P2P first; its fresh view is asked whole
            assert got == plain(view, match, client_only), (view.client[:80], view.server[:80])
        fresh = FlowView(META, client=view.client, server=view.server)
        assert got == detect(fresh), (view.client[:80], view.server[:80])
    view.complete = True
    assert detect(view) == detect(FlowView(META, client=view.client, server=view.server, complete=True))


@pytest.mark.parametrize(("detect", "match", "client_only"), DETECTORS, ids=IDS)
@settings(max_examples=examples(300), deadline=None)
@given(steps=st.lists(st.tuples(st.booleans(), st.sampled_from(PIECES)), max_size=14))
@example(steps=[(True, b"{"), (False, b"junk "), (False, b"junk "), (True, b'"id":1}\n')])  # one side, unchanged
@example(steps=[(True, b'{"id":1,"method":"mining.subscribe"'), (False, b"\n"), (True, b',"params":[]}\n')])
@example(steps=[(False, b'{"id":1,"result":{"job":{"job_id":"1","blob":"00","target":"ff"}}}\n')])  # server side
def test_a_grown_flow_is_judged_as_drive_of_both_sides_judges_it(
    detect: Callable[[FlowView], Result], match: SideMatch, client_only: bool, steps: list[tuple[bool, bytes]]
) -> None:
    check(detect, match, client_only, steps)


def interleaved(client: bytes, server: bytes, size: int) -> list[tuple[bool, bytes]]:
    """The two sides cut into ``size``-byte segments, taking turns (runs of one side too: two client pieces
    before each server piece)."""
    steps: list[tuple[bool, bytes]] = []
    at_client = at_server = 0
    while at_client < len(client) or at_server < len(server):
        for _ in range(2):
            if at_client < len(client):
                steps.append((True, client[at_client : at_client + size]))
                at_client += size
        if at_server < len(server):
            steps.append((False, server[at_server : at_server + size]))
            at_server += size
    return steps


@pytest.mark.parametrize(("detect", "match", "client_only"), DETECTORS, ids=IDS)
def test_the_corpus_flows_are_judged_as_drive_of_both_sides_judges_them(
    detect: Callable[[FlowView], Result], match: SideMatch, client_only: bool
) -> None:
    for flow in (*seeds.STREAMS, *seeds.corpus_seeds().streams):
        client, server = flow.client[:6000], flow.server[:6000]
        for size in (37, 700):
            check(detect, match, client_only, interleaved(client, server, size))


def test_new_bytes_that_read_the_same_keep_the_payload_object() -> None:
    """The identity `drive_sides` relies on: a side whose new bytes change nothing read is the same `Payload`."""
    reading = jsonrpc.Reading()
    first = reading.read(b"POST / HTTP/1.1\r\nContent-Length: 9000\r\n\r\n<html>", False)
    assert reading.read(b"POST / HTTP/1.1\r\nContent-Length: 9000\r\n\r\n<html><body>", False) is first
    grown = reading.read(b"POST / HTTP/1.1\r\nContent-Length: 9000\r\n\r\n<html><body>", True)
    assert grown is not first and grown.final
