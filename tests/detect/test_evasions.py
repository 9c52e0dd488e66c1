"""Stratum framings an attacker tries on an allowed port (issue 9, point 3), through every stream detector.

Each variant is what a lenient pool server still reads as its protocol. Every one must be found as mining by the
registry's TCP detectors whole, cut into 1-byte segments, and cut at random places, and found *before the flow
ends* (the proxy must block before it forwards the bytes). What lies past the engine's cap is not found, but
the flow is then unidentified, never clean.
"""

from __future__ import annotations

import random

import pytest

from egress.detect.base import Category, Finding
from egress.detect.engine import STREAM_CAP, FlowInspector
from egress.detect.registry import build_detectors
from tests.detect.feeding import META
from tests.detect.test_tls import ANDROID_GOOGLE_HELLO, TOR_CLIENT_HELLO
from tests.lists import shipped_lists

TCP = build_detectors(shipped_lists()).tcp

SUBSCRIBE = b'{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1"]}\n'
AUTHORIZE = b'{"id":2,"method":"mining.authorize","params":["wallet.worker","x"]}\n'
SUBMIT = b'{"id":4,"method":"mining.submit","params":["wallet.worker","1","00000000","5e8f","7a1b2c3d"]}\n'
XMR_LOGIN = b'{"id":1,"method":"login","params":{"login":"4AdUndX","pass":"x","agent":"XMRig/6.21.0"}}\n'
ETH_LOGIN = b'{"id":1,"method":"eth_submitLogin","params":["0xabc","x"],"worker":"rig"}\n'
BENIGN = b'{"jsonrpc":"2.0","id":%d,"method":"echo","params":["hello"]}\n'
MINER = SUBSCRIBE + AUTHORIZE


def _escaped(text: str) -> bytes:
    return "".join(f"\\u{ord(ch):04x}" if ch.isalpha() else ch for ch in text).encode()


VARIANTS: dict[str, bytes] = {
    "plain": MINER,
    "utf8-bom": b"\xef\xbb\xbf" + MINER,
    "nul": b"\x00" + MINER,
    "nuls-between-messages": SUBSCRIBE + b"\x00\x00" + AUTHORIZE,
    "whitespace": b" \t\r\n" * 8 + MINER,
    "junk-line": b"hello pool\r\n" + MINER,
    "binary-junk": bytes(range(128, 256)) + MINER,
    "fake-tls-header": b"\x16\x03\x01\x00\x05" + MINER,
    "fake-tls-header-covering": b"\x16\x03\x01" + len(MINER).to_bytes(2) + MINER,
    "fake-client-hello-type": b"\x16\x03\x01\x00\x40\x01\x00\x00\x3c" + MINER,
    "escaped-key": b'{"id":1,"' + _escaped("method") + b'":"mining.subscribe","params":[]}\n',
    "escaped-value": b'{"id":1,"method":"' + _escaped("mining.authorize") + b'","params":["w","x"]}\n',
    "escaped-slash": b'{"id":1,"method":"mining.submit","params":["a\\/b"]}\n',
    "utf16-le-bom": MINER.decode().encode("utf-16"),
    "utf16-be": MINER.decode().encode("utf-16-be"),
    "utf32-le-bom": MINER.decode().encode("utf-32"),
    "after-32-benign": b"".join(BENIGN % index for index in range(32)) + MINER,
    "after-100-benign": b"".join(BENIGN % index for index in range(100)) + MINER,
    "after-8k-spaces": b" " * 8192 + MINER,
    "after-15k-newlines": b"\n" * (15 * 1024) + MINER,
    "padding-inside-json": b'{"id":1,' + b" " * 6000 + b'"method" :  "mining.subscribe","params":[]}\n',
    "concatenated": SUBSCRIBE.rstrip() + AUTHORIZE.rstrip(),
    "concatenated-spaced": SUBSCRIBE.rstrip() + b" " + AUTHORIZE.rstrip(),
    "batch": b"[" + SUBSCRIBE.rstrip() + b"," + AUTHORIZE.rstrip() + b"]",
    "duplicate-keys": b'{"id":1,"method":"status","method":"mining.subscribe","params":[]}',
    "nested-method": b'{"id":1,"params":{"method":"mining.submit"},"x":1}',
    "long-id": b'{"id":"' + b"7" * 4000 + b'","method":"mining.authorize","params":["w","x"]}',
    "cr-only": SUBSCRIBE.rstrip() + b"\r" + AUTHORIZE.rstrip() + b"\r",
    "xmrig-bom": b"\xef\xbb\xbf" + XMR_LOGIN,
    "xmrig-escaped": XMR_LOGIN.replace(b'"login"', b'"\\u006cogin"', 1),
    "eth-after-node-calls": b'{"id":9,"method":"eth_chainId","params":[]}\n' * 3 + ETH_LOGIN,
}


def _inspect(parts: list[bytes]) -> FlowInspector:
    inspector = FlowInspector(META, TCP)
    for part in parts:
        inspector.feed_stream(True, part)
    return inspector


def _pieces(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), min(12, len(data) - 1)))
    return [data[start:end] for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True)]


@pytest.mark.parametrize("name", VARIANTS)
def test_found_before_the_flow_ends_however_cut(name: str) -> None:
    data = VARIANTS[name]
    rng = random.Random(name)
    one_byte = [[data[i : i + 1] for i in range(len(data))]] if len(data) <= 4096 else []
    for parts in ([data], *one_byte, _pieces(data, rng), _pieces(data, rng)):
        inspector = _inspect(parts)
        found = inspector.finding
        assert isinstance(found, Finding) and found.category is Category.MINING, (name, found)
        assert inspector.done


@pytest.mark.parametrize("padding", [b" ", b"\n", b"\x00", b"x"])
def test_past_the_cap_is_unidentified_not_clean(padding: bytes) -> None:
    inspector = _inspect([padding * STREAM_CAP, MINER])
    assert inspector.done
    assert inspector.finding is None
    assert inspector.unidentified


def test_benign_calls_past_the_cap_are_unidentified() -> None:
    calls = b"".join(BENIGN % index for index in range(STREAM_CAP // len(BENIGN) + 8))
    inspector = _inspect([calls, MINER])
    assert inspector.finding is None and inspector.unidentified


def test_a_pool_answering_json_to_a_real_client_hello_is_found() -> None:
    """A whole ClientHello, then plaintext calls to a lenient pool that answers in JSON: the pool's side tells."""
    notify = b'{"id":null,"method":"mining.notify","params":["1","00","01","02",[],"2","3","4",true]}\n'
    inspector = FlowInspector(META, TCP)
    inspector.feed_stream(True, TOR_CLIENT_HELLO + MINER)
    inspector.feed_stream(False, notify)
    assert inspector.finding is not None and inspector.finding.category is Category.MINING


def test_real_tls_is_not_unidentified() -> None:
    """A whole ClientHello, then records up to the cap: TLS, so the cap leaves the flow clean."""
    record = b"\x17\x03\x03\x04\x00" + bytes(1024)
    inspector = FlowInspector(META, TCP)
    inspector.feed_stream(True, ANDROID_GOOGLE_HELLO)
    inspector.feed_stream(False, b"\x16\x03\x03\x00\x02\x02\x00")
    for _ in range(STREAM_CAP // len(record) + 1):
        inspector.feed_stream(True, record)
    assert inspector.done and inspector.finding is None and not inspector.unidentified
    assert inspector.identity == "tls"
