"""`egress.detect.binframe.pending`: a binary pool message the window may still become, and what it never holds."""

from __future__ import annotations

import random

import pytest

from egress.detect import binframe, binrpc, datagrams
from egress.detect.base import FlowMeta, Transport
from egress.detect.names import NameLists
from egress.detect.registry import build_detectors
from tests.detect.test_binrpc import _cbor_map, _protobuf
from tests.detect.test_datagrams import dtls, quic, stun, wireguard
from tests.security.redteam_msgpack_kit import pack

WALLET = "4AdUndXHHZ6cfufTMvppY6JwXNouMBzSkbLYfpAV5Usx3skxNgYeYTRj5UzqtReoS44qo9mtmXCqY45DJ852K5Jv2684Rge"
PARAMS: dict[str, object] = {"login": WALLET, "pass": "x", "agent": "XMRig/6.21.0"}
LOGINS = {
    "msgpack": pack({"id": 1, "method": "login", "params": PARAMS}),
    "msgpack-params-first": pack({"params": PARAMS, "id": 1, "method": "login"}),
    "cbor": _cbor_map({"id": 1, "method": "login"}) + _cbor_map(PARAMS),
    "protobuf": _protobuf(1, "login") + _protobuf(2, WALLET) + _protobuf(3, "x") + _protobuf(4, "XMRig/6.21.0"),
}
UNNAMED = LOGINS["protobuf"].replace(WALLET.encode(), WALLET[:-1].encode() + b"f")
"""The protobuf login with a wallet no checksum holds: nothing names it."""
NAMED = ("cbor", "msgpack", "msgpack-params-first", "protobuf")
"""Logins named whole: by `binrpc`, and protobuf, which writes no key names (``pass``, ``agent`` are field numbers),
by its wallet (`egress.detect.wallet`; until then never named, so the gate held it to the hold's bounds and
refused it there: `UNNAMED` is such a login, its wallet one character off). (CBOR's ``pass`` after the
95-character wallet has a text prefix byte, ``d``, and no binary byte in the 16 before it: named since stop 32,
`binrpc._xmrig`.)"""
META = FlowMeta(Transport.UDP, "10.77.0.2", 40000, "198.18.10.3", 3478)
UDP = build_detectors(NameLists([])).udp_gate


def _pieces(data: bytes, count: int) -> list[bytes]:
    return [data[len(data) * n // count : len(data) * (n + 1) // count] for n in range(count)]


@pytest.mark.parametrize("encoding", sorted(LOGINS))
@pytest.mark.parametrize("count", [2, 3, 5])
def test_each_piece_of_a_binary_login_before_the_last_is_held(encoding: str, count: int) -> None:
    """The gate's question at each datagram: the window named (refused), or may still become a call (held). No
    piece from the first holding XMRig's ``login`` on is let go."""
    window: list[bytes] = []
    named = held = False
    for piece in _pieces(LOGINS[encoding], count):
        window.append(piece)
        joined = datagrams.joined(window)
        if datagrams.inspect(META, window, UDP) is not None:
            named = True
            break
        held = held or binrpc.find_prefixed(joined, b"login") >= 0
        assert (binframe.pending(joined) is not None) is held, (encoding, len(window))
    assert held and named is (encoding in NAMED)


@pytest.mark.parametrize("name", sorted({*binrpc.NAMES, *binframe.CALL_WORDS}))
def test_a_name_cut_by_the_datagram_end_is_held_from_its_third_byte(name: bytes) -> None:
    prefixes = [b"\xd9" + bytes([len(name)]), b"\x78" + bytes([len(name)])]  # msgpack str8, CBOR text
    prefixes += [bytes([0xA0 | len(name)])] if len(name) < 32 else []  # msgpack fixstr
    prefixes += [bytes([0x60 | len(name)])] if len(name) < 24 else []  # CBOR's short text
    for encoded in prefixes:
        head = b"\x93\x00\x01" + encoded
        for cut in range(1, len(name)):
            found = binframe.pending(head + name[:cut])
            assert (found is not None) is (cut >= binframe.CUT_MIN), (name, encoded, cut, found)


def test_a_bare_mining_name_is_held_once_mining_dot_is_whole() -> None:
    assert binframe.pending(b"\x00\x00mining.sub") is not None
    assert binframe.pending(b"\x00\x00mining.") is not None
    assert binframe.pending(b"\x00\x00minin") is None  # no length prefix gives a name's length


@pytest.mark.parametrize(
    "data",
    [
        b'{"id":1,"method":"login","params":{"login":"w"}}\n',  # JSON text: textframe's, a quoted string
        b"Please login to submit the form. The keepalived daemon",  # prose
        b"see mining.subscribe in the docs",
        pack({"id": 1, "method": "status", "params": ["logins", "submitted"]}),  # longer words
        pack({"id": 1, "method": "status", "params": ["lo"]}),  # two bytes of a word
    ],
)
def test_what_is_no_binary_pool_vocabulary_is_not_held(data: bytes) -> None:
    assert binframe.pending(data) is None


RNG = random.Random(12)
MEDIA = {
    "rtp": lambda: b"\x80\x00" + RNG.randbytes(170),
    "quic-short": lambda: bytes([0x40 | RNG.randrange(64)]) + RNG.randbytes(1199),
    "random": lambda: RNG.randbytes(RNG.randrange(1, 1400)),
    "stun": stun,
    "wireguard": wireguard,
    "dtls": dtls,
    "quic": quic,
}


@pytest.mark.parametrize("kind", sorted(MEDIA))
def test_media_and_random_datagrams_are_never_held(kind: str) -> None:
    window: list[bytes] = []
    for _ in range(2000):
        window = [*window[-(datagrams.WINDOW - 1) :], MEDIA[kind]()]
        assert binframe.pending(datagrams.joined(window)) is None
