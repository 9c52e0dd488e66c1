"""Fuzzing the WebSocket frame reader (egress/detect/websocket.py), which unwraps attacker frames for the mining
detectors: generated frame sequences (masked or not, 7/16/64-bit lengths, fragmented messages, control frames
between fragments) must unwrap to exactly the data payloads that were framed, and a Stratum subscribe framed any
such way must be found; mutated frames must never raise. tests/detect/test_websocket.py has the fixtures and a
random-bytes run."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress.detect import stratum, websocket
from egress.detect.base import MORE, Category, Finding, FlowMeta, FlowView, Transport
from tests.budget import examples
from tests.security.fuzzing import counted

pytestmark = [pytest.mark.fuzz, pytest.mark.usefixtures("fuzz_rows")]

SUBSCRIBE = b'{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1"]}\n'
UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: ws.lab\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
SWITCHED = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
META = FlowMeta(Transport.TCP, "10.203.1.2", 40000, "198.18.10.8", 80)


def frame(opcode: int, payload: bytes, fin: bool, key: bytes | None, width: int) -> bytes:
    """One frame (RFC 6455 §5.2); ``width`` forces the 7-, 16- or 64-bit length form where the size allows."""
    size = len(payload)
    if width == 8 or size > 0xFFFF:
        length = bytes([127]) + size.to_bytes(8)
    elif width == 2 or size > 125:
        length = bytes([126]) + size.to_bytes(2)
    else:
        length = bytes([size])
    head = bytes([(0x80 if fin else 0) | opcode])
    if key is None:
        return head + length + payload
    masked = bytes(byte ^ key[i % 4] for i, byte in enumerate(payload))
    return head + bytes([length[0] | 0x80]) + length[1:] + key + masked


@st.composite
def framed(draw: st.DrawFn, message: bytes, opcode: int = websocket.TEXT) -> bytes:
    """``message`` as one fragmented message (first frame ``opcode``, then continuations), with pings between."""
    cuts = sorted(set(draw(st.lists(st.integers(1, max(len(message) - 1, 1)), max_size=5))))
    pieces = [message[a:b] for a, b in zip([0, *cuts], [*cuts, len(message)], strict=True)]
    out = bytearray()
    for index, piece in enumerate(pieces):
        key = draw(st.none() | st.binary(min_size=4, max_size=4))
        kind = opcode if index == 0 else websocket.CONTINUATION
        out += frame(kind, piece, index == len(pieces) - 1, key, draw(st.sampled_from((1, 2, 8))))
        if draw(st.booleans()):
            out += frame(9, draw(st.binary(max_size=20)), True, key, 1)  # a ping may come between fragments
    return bytes(out)


@settings(max_examples=examples(300), deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from((websocket.TEXT, websocket.BINARY)), st.binary(max_size=300)), max_size=4),
    st.data(),
)
@counted("websocket.unwrap (generated)")
def test_generated_frames_unwrap_to_their_payloads(messages: list[tuple[int, bytes]], data: st.DataObject) -> None:
    stream = b"".join(data.draw(framed(payload or b"x", opcode)) for opcode, payload in messages)
    unwrapped = websocket.unwrap(b"junk" + stream, 4)
    assert unwrapped is not None
    assert unwrapped.payload == b"".join(payload or b"x" for _, payload in messages)
    if messages:
        assert unwrapped.first_opcode == messages[0][0]
        assert unwrapped.first_done


@settings(max_examples=examples(200), deadline=None)
@given(st.data())
@counted("websocket detector + stratum (generated framing)")
def test_a_subscribe_is_found_however_it_is_framed(data: st.DataObject) -> None:
    client = UPGRADE + data.draw(framed(SUBSCRIBE))
    detect = websocket.make_websocket_detector((stratum.detect,))
    found = detect(FlowView(META, client, SWITCHED, complete=True))
    assert isinstance(found, Finding) and found.category is Category.MINING, found


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(framed(draw(st.binary(min_size=1, max_size=200)))))
    for _ in range(draw(st.integers(1, 5))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if data and draw(st.booleans()):
            data[at] = draw(st.integers(0, 255))
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=9))
    return bytes(data)


@settings(max_examples=examples(500), deadline=None)
@given(mutated(), st.booleans())
@counted("websocket detector (mutated frames)")
def test_mutated_frames_never_raise(frames: bytes, complete: bool) -> None:
    unwrapped = websocket.unwrap(frames, 0)
    assert unwrapped is None or isinstance(unwrapped.payload, bytes)
    detect = websocket.make_websocket_detector((stratum.detect,))
    result = detect(FlowView(META, UPGRADE + frames, SWITCHED + frames[::-1], complete=complete))
    assert result is None or result is MORE or isinstance(result, Finding)
