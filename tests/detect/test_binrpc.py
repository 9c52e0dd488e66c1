"""Tests for the binary-RPC mining detector: each encoding's length prefix found, bare tokens in text not."""

from __future__ import annotations

import struct

import pytest

from egress.detect import binrpc
from egress.detect.base import Category, Finding
from tests.detect.feeding import feed_every_split, feed_stream
from tests.security.redteam_msgpack_kit import pack


def _cbor_text(text: str) -> bytes:
    raw = text.encode()
    return (bytes([0x60 | len(raw)]) if len(raw) < 24 else bytes([0x78, len(raw)])) + raw


def _cbor_map(items: dict[str, object]) -> bytes:
    out = bytes([0xA0 | len(items)])
    for key, value in items.items():
        out += _cbor_text(key)
        out += _cbor_text(value) if isinstance(value, str) else bytes([value if isinstance(value, int) else 0xF6])
    return out


def _protobuf(field: int, text: str) -> bytes:
    raw = text.encode()
    return bytes([(field << 3) | 2, len(raw)]) + raw


def _bson_string(name: str, text: str) -> bytes:
    raw = text.encode() + b"\x00"
    return b"\x02" + name.encode() + b"\x00" + struct.pack("<i", len(raw)) + raw


MSGPACK_SUBSCRIBE = pack({"id": 1, "method": "mining.subscribe", "params": ["cpuminer/2.5.1"]})
MSGPACK_SET_DIFFICULTY = pack({"id": None, "method": "mining.set_difficulty", "params": [8]})
POSITIVES = {
    "msgpack-fixstr": MSGPACK_SUBSCRIBE,
    "msgpack-str8": pack({"id": 1, "method": "mining.extranonce.subscribe", "params": []}),
    "msgpack-notify": MSGPACK_SET_DIFFICULTY,
    "cbor": _cbor_map({"id": 2, "method": "mining.authorize", "params": 0}),
    "cbor-short-name": _cbor_map({"id": 2, "method": "getwork"}),
    "protobuf": _protobuf(1, "7") + _protobuf(2, "mining.submit") + _protobuf(3, "wallet.worker"),
    "protobuf-eth": _protobuf(2, "eth_submitLogin") + _protobuf(3, "0xabc"),
    "bson": _bson_string("method", "getblocktemplate"),
    "bencode": b"d2:idi1e6:method16:mining.subscribe6:paramslee",
    "msgpack-xmrig-login": pack(
        {"id": 1, "method": "login", "params": {"login": "wallet", "pass": "x", "agent": "XMRig/6.21.0"}}
    ),
    "msgpack-xmrig-submit": pack(
        {"id": 2, "method": "submit", "params": {"id": "a", "job_id": "j1", "nonce": "0000", "result": "ff"}}
    ),
    "cbor-eth-getwork": _cbor_map({"id": 3, "method": "eth_getWork"}),
}

NEGATIVES = {
    "prose": b"The pool speaks Stratum: the miner sends mining.subscribe, then mining.authorize and getwork.\n",
    "json": b'{"id":1,"method":"mining.subscribe","params":[]}\n',  # the JSON detectors' work, not this one's
    "quoted-docs": b'<code>"mining.set_target"</code> and <b> mining.authorize</b>',
    "glued-letter-in-text": b"see pmining.subscribe and mmining.submit for details\n",
    "msgpack-benign-login": pack({"id": 1, "method": "login", "params": {"user": "alice", "password": "x"}}),
    "protobuf-benign-submit": _protobuf(1, "submit") + _protobuf(2, "form-42"),
    "msgpack-job-without-keys": pack({"method": "job", "params": {"queue": "default"}}),
    "unprefixed-binary": b"\x00\x01\x02XXmining.subscribe\x00",
    "wrong-length": b"\x00\x0fgetblocktemplate\x00",  # (a mining. name after a control is read bare)
}


@pytest.mark.parametrize("name", sorted(POSITIVES))
def test_finds_each_encoding(name: str) -> None:
    found = feed_stream(binrpc.detect, POSITIVES[name])
    assert found is not None
    assert (found.category, found.protocol, found.detector) == (Category.MINING, binrpc.PROTOCOL, binrpc.NAME)


@pytest.mark.parametrize("name", sorted(NEGATIVES))
def test_ignores_text_and_benign_calls(name: str) -> None:
    assert feed_stream(binrpc.detect, NEGATIVES[name]) is None


def test_finds_the_pool_side_alone() -> None:
    assert feed_stream(binrpc.detect, b"\x00" * 8, MSGPACK_SET_DIFFICULTY) is not None


def test_every_split_finds_it() -> None:
    stream = b"\x93\x01\x02\x03" * 20 + MSGPACK_SUBSCRIBE
    assert all(found is not None for found in feed_every_split(binrpc.detect, stream))


def test_keepalived_needs_a_job_somewhere() -> None:
    keepalive = pack({"id": 4, "method": "keepalived", "params": {"id": "a"}})
    assert feed_stream(binrpc.detect, keepalive) is None
    job = pack({"method": "job", "params": {"job_id": "j1", "blob": "00", "target": "ff"}})
    assert feed_stream(binrpc.detect, keepalive, job) is not None


def test_tls_both_ways_is_ruled_out() -> None:
    from tests.detect.test_tls import TOR_CLIENT_HELLO, TOR_SERVER_FLIGHT

    assert feed_stream(binrpc.detect, TOR_CLIENT_HELLO, TOR_SERVER_FLIGHT, close=False) is None


def test_after_a_finding_a_longer_prefix_answers_as_a_fresh_view_of_its_bytes() -> None:
    """Found by atheris (jsonrpc target, fuzz_found/jsonrpc/crash-0bd7...): the incremental search went on from
    where it stopped, so the prefix after the one that held the name answered MORE where a fresh view of the same
    bytes found it. Also when the server's name came first and the client's follows (a fresh view reads the
    client's side first)."""
    from egress.detect.base import FlowMeta, FlowView, Transport

    meta = FlowMeta(Transport.TCP, "10.203.1.2", 40000, "198.18.10.3", 3333)
    grown = FlowView(meta)
    pad = b"\x00" * 100  # past the search's overlap: the name lies behind where the next search starts
    steps = [(False, b"\x01\x02" + pack({"method": "mining.notify"}) + pad), (False, pad),
             (True, pack({"id": 1, "method": "mining.subscribe"}) + pad), (True, pad)]  # fmt: skip
    answers = []
    for index, (from_client, data) in enumerate(steps):
        if from_client:
            grown.client += data
        else:
            grown.server += data
        grown.complete = index == len(steps) - 1
        fresh = FlowView(meta, grown.client, grown.server, complete=grown.complete)
        answers.append((binrpc.detect(grown), binrpc.detect(fresh)))
    assert all(mine == theirs for mine, theirs in answers), answers
    assert all(isinstance(mine, Finding) for mine, _ in answers), answers


def test_xmrig_login_in_cbor_with_its_keys_after_the_wallet_is_named() -> None:
    """Stop 32: CBOR writes ``pass`` after the 95-character wallet with a text prefix (``d``) and only text in the
    16 bytes before it; binary context was required of every prefix, so nothing named the login."""
    wallet = "4AdUndXHHZ6cfufTMvppY6JwXNouMBzSkbLYfpAV5Usx3skxNgYeYTRj5UzqtReoS44qo9mtmXCqY45DJ852K5Jv2684Rge"
    login = _cbor_map({"id": 1, "method": "login"}) + _cbor_map({"login": wallet, "pass": "x", "agent": "XMRig/6"})
    for found in feed_every_split(binrpc.detect, login):
        assert isinstance(found, Finding) and found.category is Category.MINING


@pytest.mark.parametrize(
    "text",
    [
        b"The reagent was added; bypass valve open.\nagent smith: login required, dpass 4",  # the keys, prose
        b"\x05login is a binary word, then prose: the reagent, Dpassage, the\nagent",  # no "pass" prefixed
    ],
)
def test_xmrig_keys_in_prose_do_not_make_a_call(text: bytes) -> None:
    assert feed_stream(binrpc.detect, text) is None


def _cbor_str(text: str) -> bytes:
    raw = text.encode()
    size = len(raw)
    return (
        bytes([0x60 | size]) if size < 24 else bytes([0x78, size]) if size < 256 else b"\x79" + size.to_bytes(2)
    ) + raw


@pytest.mark.parametrize("pad", [5, 300, 5000])
def test_a_cbor_method_after_a_long_text_value_is_named(pad: int) -> None:
    """Stop 32: a CBOR text string's head is a letter, so ``method`` and its name after a 20-byte agent string had
    only text before them: Stratum's subscribe so ordered was named by no detector."""
    agent = "cpuminer/2.5.1 " + "é" * pad  # non-ASCII text in the value: the walk starts before it
    subscribe = b"\xa3" + _cbor_str("id") + b"\x01" + _cbor_str("params") + _cbor_str(agent)
    subscribe += _cbor_str("method") + _cbor_str("mining.subscribe")
    found = feed_stream(binrpc.detect, subscribe)
    assert found is not None and found.category is Category.MINING


@pytest.mark.parametrize(
    "text",
    [
        b"\x01" + b"x" * 40 + b" the call is pmining.subscribe, see",  # a letter giving the length, text before
        b"\x00\x00" + b"Dear reader,\n" * 20 + b"call mining.subscribe (mining.subscribe) 'mining.subscribe'",
        b"\x00\x05login" + b"Dear reader,\n" * 20 + b"the reagent, bypass it: pass the agent a nonce\n",
    ],
)
def test_text_after_a_binary_byte_is_not_taken_for_cbor_items(text: bytes) -> None:
    """Prose after binary bytes may read as CBOR items (a letter is a string's head), but it writes a name after a
    space, a bracket or a quote, none of them a string head (a name needs the head that gives its length: ``p``
    before ``mining.subscribe``, ``d`` before ``pass``)."""
    assert feed_stream(binrpc.detect, text) is None
