"""Tests for the Stratum v1 detector."""

from __future__ import annotations

import pytest

from egress.detect import stratum
from egress.detect.base import MORE, Category, Finding, FlowView
from tests.detect.feeding import META, feed_every_split, feed_stream
from tests.detect.test_jsonrpc import NEGATIVE_IDS, NEGATIVES
from tests.detect.test_tls import TOR_CLIENT_HELLO, TOR_SERVER_FLIGHT

# peafowl_stratum.pcap (EWBF to eu1-zcash.flypool.org:3333), client side.
EWBF_CLIENT = (
    b'{"id":1,"method":"mining.subscribe","params":["EWBF 0.3.4b",null,"eu1-zcash.flypool.org","3333"]}\n'
    b'{"id":2,"method":"mining.authorize","params":["t1fAhZF5aUJdY7CikGULHmeYk7id8qmvbAd.rig4","x"]}\n'
)
# nesfit_cgminer.g0.pcapng: cgminer's subscribe, and a pool's subscribe result (server side only).
CGMINER_SUBSCRIBE = b'{"id": 5, "method": "mining.subscribe", "params": ["cgminer/3.7.2"]}\n'
POOL_SUBSCRIBE_RESULT = (
    b'{"id":5,"result":[[["mining.notify","220019ae99a5896c"],["mining.set_difficulty","220019ae99a5896c2"]],'
    b'"220019ae",4],"error":null}\n'
)
# nesfit_zec-eu1.nanopool.org.pcapng, server side.
ZEC_SERVER = (
    b'{"id":1,"result":[null,"e66c000000000000bbb0a52bb340bc35"],"error":null}\n'
    b'{"id":0,"params":["0004189300000000000000000000000000000000000000000000000000000000"],'
    b'"method":"mining.set_target"}\n'
)
# nesfit_cgminer.g0.pcapng: a pool that answers the subscribe with HTTP.
HTTP_400 = b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n400"
# WebSocket-unwrapped payloads arrive concatenated without newlines.
CONCATENATED = b'{"id":1,"result":true}{"id":null,"method":"mining.notify","params":["a9961",true]}'


@pytest.mark.parametrize(
    ("client", "server"),
    [
        (EWBF_CLIENT, b""),
        (CGMINER_SUBSCRIBE, HTTP_400),
        (POOL_SUBSCRIBE_RESULT, b""),
        (ZEC_SERVER, b""),
        (CONCATENATED, b""),
        (b'{"id":1,"method":"mining.configure","params":[["version-rolling"],{}]}\n', b""),
    ],
    ids=["ewbf", "cgminer-http-answer", "subscribe-result", "zec-server", "concatenated", "configure"],
)
def test_finds_stratum_at_every_split(client: bytes, server: bytes) -> None:
    results = feed_every_split(stratum.detect, client, server)
    assert all(result == results[0] for result in results)
    finding = results[0]
    assert isinstance(finding, Finding)
    assert finding.category is Category.MINING
    assert finding.protocol == "stratum-v1"
    assert finding.detector == "stratum"


def test_server_only_direction() -> None:
    assert isinstance(feed_stream(stratum.detect, b"", ZEC_SERVER), Finding)


def test_ethereum_stratum_label() -> None:
    client = b'{"id":1,"method":"mining.subscribe","params":["ethminer/0.19","EthereumStratum/1.0.0"]}\n'
    finding = feed_stream(stratum.detect, client)
    assert finding is not None and finding.protocol == "ethereum-stratum"


@pytest.mark.parametrize(("client", "server"), NEGATIVES, ids=NEGATIVE_IDS)
def test_ignores_other_traffic(client: bytes, server: bytes) -> None:
    assert feed_stream(stratum.detect, client, server) is None


@pytest.mark.parametrize(
    "client",
    [
        b'{"id":1,"method":"getmininginfo","params":[]}\n',
        b'{"id":1,"method":"mining","params":["mining.subscribe"]}\n',
        b'{"id":1,"method":"eth_submitLogin","params":["0xabc","x"]}\n',
    ],
)
def test_ignores_near_misses(client: bytes) -> None:
    assert feed_stream(stratum.detect, client) is None


def test_rejects_tls_once_both_hellos_are_whole() -> None:
    """A record header is not TLS by itself (issue 9: a 5-byte fake header before JSON): only whole hellos are."""
    assert stratum.detect(FlowView(META, client=b"\x16\x03\x01")) is MORE
    assert stratum.detect(FlowView(META, client=TOR_CLIENT_HELLO)) is MORE
    assert stratum.detect(FlowView(META, client=TOR_CLIENT_HELLO, server=TOR_SERVER_FLIGHT)) is None


def test_finds_json_after_a_fake_tls_record_header() -> None:
    subscribe = b'{"id":1,"method":"mining.subscribe","params":[]}\n'
    found = feed_stream(stratum.detect, b"\x16\x03\x01\x00\x05" + subscribe, b"")
    assert found is not None and found.protocol == "stratum-v1"
