"""egress.proxy.holdback: which bytes of a direction may be forwarded while the detectors wait for a message."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress.detect.base import Category, FlowMeta, Transport
from egress.detect.engine import FlowInspector
from egress.detect.registry import MINING
from egress.proxy.holdback import HOLD_FOR, Holdback
from tests.budget import examples
from tests.detect.test_registry import DETECTORS

SUBSCRIBE = b'{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1"]}\n'
AUTHORIZE = b'{"id":2,"method":"mining.authorize","params":["wallet.worker","x"]}\n'
META = FlowMeta(Transport.TCP, "10.0.0.5", 40000, "198.51.100.7", 3333)


def _fed(hold: Holdback, parts: list[bytes], now: float = 0.0) -> list[bytes]:
    return [hold.feed(part, now) for part in parts]


def test_an_open_value_is_held_until_it_closes() -> None:
    hold = Holdback()
    out = _fed(hold, [SUBSCRIBE[i : i + 1] for i in range(len(SUBSCRIBE) - 2)])
    assert b"".join(out) == b""
    assert hold.feed(SUBSCRIBE[-2:-1], 0.0) == SUBSCRIBE[:-1]  # the closing brace releases the whole message
    assert hold.feed(b"\n", 0.0) == b"\n"


def test_bytes_outside_a_value_go_at_once() -> None:
    hold = Holdback()
    assert hold.feed(b"PING\r\n", 0.0) == b"PING\r\n"
    assert hold.feed(b"junk ", 0.0) == b"junk "
    assert hold.feed(b'x {"a": "}"', 0.0) == b"x "  # a brace inside a string does not close the value
    assert hold.feed(b"}\n", 0.0) == b'{"a": "}"}\n'


def test_strings_and_escapes_are_followed() -> None:
    hold = Holdback()
    assert hold.feed(b'{"k": "\\"{[", "m": [1, {"n": 2}', 0.0) == b""
    assert hold.feed(b"]}", 0.0) == b'{"k": "\\"{[", "m": [1, {"n": 2}]}'


def test_nuls_are_skipped_as_the_lenient_reader_drops_them() -> None:
    utf16 = SUBSCRIBE.decode().encode("utf-16-le")
    hold = Holdback()
    out = _fed(hold, [utf16[i : i + 3] for i in range(0, len(utf16) - 4, 3)])
    assert b"".join(out) == b""


@pytest.mark.parametrize("binary", [b"\x01", b"\x1b", b"\x7f", b"\x08"])
def test_a_byte_no_json_holds_ends_the_value(binary: bytes) -> None:
    hold = Holdback()
    assert hold.feed(b"\x05{ab", 0.0) == b"\x05"
    assert hold.feed(binary + b"cd", 0.0) == b"{ab" + binary + b"cd"


def test_held_bytes_go_after_the_time_bound_and_the_rest_of_the_value_is_held_again() -> None:
    hold = Holdback()
    assert hold.feed(b'{"id":1,', 10.0) == b""
    assert hold.due(10.0) == HOLD_FOR
    assert hold.due(10.0 + HOLD_FOR / 2) == pytest.approx(HOLD_FOR / 2)
    assert hold.due(10.0 + HOLD_FOR) == 0
    assert hold.release() == b'{"id":1,'
    assert hold.due(12.0) is None
    assert hold.feed(b'"m":2', 12.0) == b""  # still inside the same value
    assert hold.feed(b"}", 12.1) == b'"m":2}'


def test_the_newest_byte_sets_the_time() -> None:
    """A value that keeps growing is held: only a pause of `HOLD_FOR` lets it go (a message sent byte by byte on
    a loaded machine took longer than that to arrive whole, and all of it but the end crossed)."""
    hold = Holdback()
    hold.feed(b"{", 1.0)
    hold.feed(b'"a"', 1.5)
    assert hold.due(1.5) == pytest.approx(HOLD_FOR)
    for step in range(1, 50):  # a byte every 0.9 HOLD_FOR: never due
        now = 1.5 + step * 0.9 * HOLD_FOR
        assert hold.feed(b" ", now) == b""
        assert hold.due(now) == pytest.approx(HOLD_FOR)
    hold.feed(b':1}{"b"', 1.7)  # the first value closes, a second one opens: its own time
    assert hold.held == b'{"b"'
    assert hold.due(1.7) == pytest.approx(HOLD_FOR)


@pytest.mark.parametrize(
    "head", [b"SSH-2.0-OpenSSH_9.2\r\n", bytes.fromhex("16030100") + b"\x00"], ids=["ssh", "tls-record"]
)
def test_tls_and_ssh_are_not_held_only_when_shown(head: bytes) -> None:
    hold = Holdback()
    out = hold.feed(head + b'{"x', 0.0)
    if head.startswith(b"SSH-"):
        assert out == head + b'{"x'  # an SSH banner: the JSON detectors do not read this direction
    else:
        assert out == head  # a record header without a whole hello is junk before a value, not TLS


def test_once_the_flow_is_decided_everything_goes() -> None:
    hold = Holdback()
    assert hold.feed(b'{"a":', 0.0) == b""
    assert hold.feed(b"1", 0.0, deciding=False) == b'{"a":1'
    assert hold.feed(b"{", 0.0, deciding=False) == b"{"


@st.composite
def _cuts(draw: st.DrawFn, data: bytes) -> list[bytes]:
    points = sorted(draw(st.sets(st.integers(1, len(data) - 1), max_size=len(data) - 1)))
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


PREFIXES = (b"", b"\xef\xbb\xbf", b"\x00", b" \r\n", b"\x16\x03\x01\x00\x05", bytes(range(128, 140)))


@settings(max_examples=examples(150), deadline=None)
@given(st.sampled_from(PREFIXES), st.data())
def test_no_byte_of_a_mining_message_is_released_before_the_detectors_find_it(
    prefix: bytes, data: st.DataObject
) -> None:
    """The pure property the lab checks: fed as the layer feeds them (detectors first, then the hold), the bytes
    released before the mining finding are at most the junk before the message, however the stream is cut."""
    stream = prefix + SUBSCRIBE + AUTHORIZE
    inspector = FlowInspector(META, (*MINING, *DETECTORS.tcp))
    hold = Holdback()
    released = b""
    for part in data.draw(_cuts(stream)):
        finding = inspector.feed_stream(True, part)
        if finding is not None and finding.category is Category.MINING:
            break
        released += hold.feed(part, 0.0, deciding=not inspector.done)
    else:
        pytest.fail("no mining finding")
    assert prefix.startswith(released)
