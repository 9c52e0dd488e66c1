"""`egress.detect.datagrams`: what the UDP gate refuses in an allowed flow's datagrams, and what it lets pass."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress.detect import datagrams
from egress.detect.base import MORE, Category, Finding, FlowMeta, FlowView, Transport
from egress.detect.datagrams import WINDOW, WINDOW_BYTES, detect_pool, dtls_record, inspect, quic_long_header
from egress.detect.registry import build_detectors
from egress.policy.lists import load_name_lists
from tests.budget import examples

META = FlowMeta(Transport.UDP, "10.0.0.2", 40000, "198.18.10.3", 3478)
UDP = build_detectors(load_name_lists()).udp_gate


def wireguard() -> bytes:
    return b"\x01\x00\x00\x00" + os.urandom(144)


def dtls() -> bytes:
    body = b"\x01" + (60).to_bytes(3, "big") + b"\x00\x00" + bytes(6) + b"\xfe\xfd" + os.urandom(40)
    return b"\x16\xfe\xfd" + bytes(8) + len(body).to_bytes(2, "big") + body


def quic() -> bytes:
    head = b"\xc0\x00\x00\x00\x01\x08" + os.urandom(8) + b"\x08" + os.urandom(8) + b"\x00\x44\xa0"
    return (head + os.urandom(1200))[:1200]


def stratum() -> bytes:
    call = {"id": 1, "method": "mining.submit", "params": ["wallet.w", "job1", "00", "5e", "00"]}
    return json.dumps(call).encode() + b"\n"


def xmrig() -> bytes:
    params = {"login": "4" + "A" * 94, "pass": "x", "agent": "XMRig/6.21.0"}
    return json.dumps({"id": 1, "jsonrpc": "2.0", "method": "login", "params": params}).encode() + b"\n"


def stun() -> bytes:
    return b"\x00\x01\x00\x00\x21\x12\xa4\x42" + os.urandom(12)


KINDS = {"wireguard": wireguard, "dtls": dtls, "quic": quic, "stratum": stratum, "xmrig": xmrig}
CATEGORY = {"wireguard": Category.TUNNEL, "dtls": Category.TUNNEL, "quic": Category.TUNNEL}


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_payload_alone_is_refused(kind: str) -> None:
    found = inspect(META, [KINDS[kind]()], UDP)
    assert found is not None
    assert found.category is CATEGORY.get(kind, Category.MINING)


@pytest.mark.parametrize("kind", list(KINDS))
def test_after_benign_and_junk_datagrams(kind: str) -> None:
    window = [stun(), os.urandom(60), b"junk text before it", KINDS[kind]()]
    assert inspect(META, window, UDP) is not None


@pytest.mark.parametrize("kind", ["stratum", "xmrig"])
@pytest.mark.parametrize("parts", [2, 3, 7])
def test_a_pool_message_split_over_datagrams_is_read_whole(kind: str, parts: int) -> None:
    message = KINDS[kind]()
    size = -(-len(message) // parts)
    pieces = [message[i : i + size] for i in range(0, len(message), size)]
    assert inspect(META, pieces, UDP) is not None


@pytest.mark.parametrize("kind", ["stratum", "xmrig"])
def test_a_pool_message_after_junk_in_the_same_datagram(kind: str) -> None:
    assert inspect(META, [os.urandom(40).replace(b"{", b"(") + KINDS[kind]()], UDP) is not None


def test_quic_and_dtls_pass_when_the_rule_expects_them() -> None:
    assert inspect(META, [quic()], UDP, quic=True) is None
    assert inspect(META, [dtls()], UDP, dtls=True) is None
    assert inspect(META, [quic()], UDP, dtls=True) is not None  # one does not imply the other
    assert inspect(META, [quic(), stratum()], UDP, quic=True) is not None  # what is in clear is still read


def test_benign_datagrams_pass() -> None:
    assert inspect(META, [stun() for _ in range(WINDOW)], UDP) is None
    assert inspect(META, [b'{"id":1,"method":"ping"}\n'], UDP) is None
    assert inspect(META, [b"\x00" * 100], UDP) is None


def test_recognisers_on_their_own() -> None:
    assert dtls_record(dtls()) is not None and "ClientHello" in (dtls_record(dtls()) or "")
    assert dtls_record(stun()) is None and dtls_record(b"\x16\xfe") is None
    assert quic_long_header(quic()) is not None
    assert quic_long_header(b"\xc0\x00\x00\x00\x01\x30" + bytes(60)) is None  # a 48-byte connection id: not QUIC
    assert quic_long_header(stun()) is None


def test_a_split_pool_message_after_media_sized_datagrams_is_still_read() -> None:
    message = stratum()
    window = [os.urandom(1200) for _ in range(2)] + [message[:40], message[40:]]
    assert inspect(META, window, UDP) is not None


def test_pool_messages_without_line_breaks_in_separate_datagrams() -> None:
    assert inspect(META, [os.urandom(30), xmrig().rstrip(b"\n")], UDP) is not None


@pytest.mark.parametrize("pad", [4096, 5000, 60000])
def test_a_pool_message_alone_in_one_datagram_past_the_window_is_read_whole(pad: int) -> None:
    """Red team 12: the pool detectors read the window's latest 4,096 bytes, so a message alone in one longer
    datagram (padding after the keys a pool reads) was read from its tail and passed."""
    padded = json.loads(xmrig())
    padded["params"]["pad"] = "x" * pad
    subscribe = {"id": 1, "method": "mining.subscribe", "params": ["cpuminer/2.5" + " " * pad]}
    for message in (json.dumps(padded).encode() + b"\n", json.dumps(subscribe).encode() + b"\n"):
        assert len(message) > WINDOW_BYTES
        assert inspect(META, [message], UDP) is not None
        assert inspect(META, [stun(), os.urandom(3000), message], UDP) is not None


def _pool_at_each_datagram(client: list[bytes], server: tuple[bytes, ...] = ()) -> list[object]:
    """`detect_pool` as the engine calls it: one view, its datagram lists growing, asked after each datagram."""
    view = FlowView(META)
    results: list[object] = []
    for datagram in client:
        view.client_datagrams.append(datagram)
        results.append(detect_pool(view))
    for datagram in server:
        view.server_datagrams.append(datagram)
        results.append(detect_pool(view))
    view.complete = True
    results.append(detect_pool(view))
    return results


@pytest.mark.parametrize(
    ("client", "protocol"),
    [
        ([stratum()], "stratum-v1"),
        ([xmrig()], "cryptonote-stratum"),
        ([xmrig()[:40], xmrig()[40:90], xmrig()[90:]], "cryptonote-stratum"),
        ([b"\x00\x01junk", stratum()], "stratum-v1"),
    ],
    ids=["stratum", "xmrig", "xmrig-in-three", "after-junk"],
)
def test_a_capture_names_a_pool_message_in_a_flows_datagrams(client: list[bytes], protocol: str) -> None:
    """The scanner's and the drop logger's UDP detector (`DetectorSet.udp`), on the engine's datagrams."""
    found = [result for result in _pool_at_each_datagram(client) if isinstance(result, Finding)]
    assert found and found[0].category is Category.MINING and found[0].protocol == protocol
    assert detect_pool in build_detectors(load_name_lists()).udp


def test_the_pools_job_in_the_replies_is_named() -> None:
    job = b'{"jsonrpc":"2.0","method":"job","params":{"blob":"0405","job_id":"6775","target":"69ba0000"}}\n'
    found = _pool_at_each_datagram([b"hello"], (job,))
    assert isinstance(found[-1], Finding) and found[-1].protocol == "cryptonote-stratum"


def test_each_answer_is_the_one_a_fresh_view_gives() -> None:
    """The memo (joined streams, detectors done) changes no answer: asked after each datagram, or once afresh."""
    datagrams = [b"x", xmrig()[:50], b"\n", stratum()[:30], stratum()[30:]]
    grown = _pool_at_each_datagram(datagrams)
    for count in range(1, len(datagrams) + 1):
        fresh = detect_pool(FlowView(META, client_datagrams=datagrams[:count]))
        assert fresh == grown[count - 1], count


@pytest.mark.parametrize("datagrams", [[wireguard()], [dtls()], [quic()], [b"\x80\x00" + os.urandom(170)] * 3])
def test_binary_datagrams_name_no_pool(datagrams: list[bytes]) -> None:
    results = _pool_at_each_datagram(datagrams)
    assert not any(isinstance(result, Finding) for result in results)
    assert (results[-1] in (None, MORE) and results[-1] is not MORE) or len(results) > 1


_PIECES = st.sampled_from([b"", b"x", b"\n", b"{", stratum()[:30], stratum()[30:], xmrig()[:50], xmrig()[50:], quic()])
_STEPS = st.lists(
    st.tuples(st.sampled_from(["client", "server", "replace", "fresh-list"]), _PIECES, st.integers(0, 30)),
    min_size=1,
    max_size=14,
)


@settings(max_examples=examples(300), deadline=None)
@given(_STEPS)
def test_the_kept_joins_are_the_joins_of_the_datagrams_at_every_call(steps: list[tuple[str, bytes, int]]) -> None:
    """`detect_pool` keeps each side's joined bytes between calls (scan23): at every call they are the join of that
    side's datagrams as they are then, even where a list was changed in place or replaced rather than grown (a
    memo keyed by the count alone fails here); a side that did not change is the very object of the last call; and
    every answer is the one a fresh view of the same datagrams gives."""
    view = FlowView(META)
    last: tuple[bytes, bytes] | None = None
    appended = True  # the engine only appends; `detect_pool`'s detectors-done set counts on it, the joins do not
    for action, piece, where in steps:
        grown = view.client_datagrams if action != "server" else view.server_datagrams
        if action in ("client", "server") or not grown:
            grown.append(piece)
        elif action == "replace":
            grown[where % len(grown)] = piece + b"!"
            appended = False
        else:
            view.client_datagrams = [*grown[:-1], piece + b"?"]
            appended = False
        answer = detect_pool(view)
        stream = view.memo[datagrams._POOL_VIEW]
        assert isinstance(stream, FlowView)
        assert stream.client == b"".join(view.client_datagrams)
        assert stream.server == b"".join(view.server_datagrams)
        if last is not None and action == "client" and view.server_datagrams:
            assert stream.server is last[1]
        if last is not None and action == "server" and view.client_datagrams:
            assert stream.client is last[0]
        last = (stream.client, stream.server)
        if appended:
            fresh = FlowView(META, client_datagrams=[*view.client_datagrams], server_datagrams=[*view.server_datagrams])
            assert answer == detect_pool(fresh)
        if isinstance(answer, Finding):
            return
