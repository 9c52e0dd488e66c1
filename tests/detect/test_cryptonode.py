"""Tests for the cryptocurrency node (P2P and node/wallet RPC) detector."""

from __future__ import annotations

import pytest

from egress.detect import cryptonode
from egress.detect.base import Category, Finding
from egress.detect.engine import FlowInspector
from egress.detect.registry import build_detectors
from tests.detect import feeding
from tests.detect.feeding import feed_every_split, feed_stream
from tests.detect.test_jsonrpc import NEGATIVE_IDS, NEGATIVES
from tests.lists import shipped_lists

# ndpi_bitcoin.pcap: the start of a node's version message (mainnet magic, "version" command).
BITCOIN_VERSION = bytes.fromhex(
    "f9beb4d976657273696f6e0000000000550000000" + "17d0000010000000000000041b0904d00000000010000000000000000"
)
# ndpi_monero.pcap: the start of a Levin handshake request (command 1001).
MONERO_LEVIN = bytes.fromhex("012101010101010106010000000000000001e903000000000000010000000100000001110101010201")
# peafowl_ethereum-js-http.pcap: web3_clientVersion to geth over HTTP.
GETH_VERSION = (
    b"POST / HTTP/1.1\r\nHost: localhost:8545\r\nUser-Agent: curl/7.56.1\r\nAccept: */*\r\n"
    b"Content-Type: application/json\r\nContent-Length: 66\r\n\r\n"
    b'{"id":1,"jsonrpc":"2.0","method":"web3_clientVersion","params":[]}'
)
BITCOIN_RPC = b'{"jsonrpc":"1.0","id":"curl","method":"getblockchaininfo","params":[]}'
MONERO_RPC = b'{"jsonrpc":"2.0","id":"0","method":"get_info"}'
NANO_RPC = b'{"action":"account_balance","account":"nano_1111111111111111111111111111111111111111111111111117353trpda"}'


@pytest.mark.parametrize(
    ("client", "protocol"),
    [
        (BITCOIN_VERSION, "bitcoin-p2p"),
        (bytes.fromhex("1c163f28") + BITCOIN_VERSION[4:], "bitcoin-testnet4-p2p"),
        (MONERO_LEVIN, "monero-levin"),
        (GETH_VERSION, "ethereum-rpc"),
        (BITCOIN_RPC, "bitcoin-rpc"),
        (MONERO_RPC, "monero-rpc"),
        (NANO_RPC, "nano-rpc"),
    ],
    ids=["bitcoin", "testnet4", "levin", "geth", "bitcoin-rpc", "monero-rpc", "nano-rpc"],
)
def test_finds_node_traffic_at_every_split(client: bytes, protocol: str) -> None:
    results = feed_every_split(cryptonode.detect, client)
    assert all(result == results[0] for result in results)
    finding = results[0]
    assert isinstance(finding, Finding)
    assert (finding.category, finding.protocol, finding.detector) == (Category.CRYPTO_NODE, protocol, "cryptonode")


def test_server_side_p2p() -> None:
    assert isinstance(feed_stream(cryptonode.detect, b"", MONERO_LEVIN), Finding)


@pytest.mark.parametrize(
    ("client", "server"),
    [
        *NEGATIVES,
        # Mining calls are not node traffic, even when eth_* (a stream mixing both: see the test below).
        (b'{"id":3,"jsonrpc":"2.0","method":"eth_getWork","params":[]}\n', b""),
        (b'{"id":0,"method":"getblocktemplate","params":[]}\n', b""),
        (b'{"id":1,"method":"mining.subscribe","params":[]}\n', b""),
        # A Bitcoin magic followed by a command that is not one.
        (bytes.fromhex("f9beb4d9") + b"hello\x00\x00\x00\x00\x00\x00\x00" + b"\x00" * 8, b""),
        (b"\x01\x21\x01\x01\x01\x01\x01\x02" + b"\x00" * 24, b""),
    ],
    ids=[*NEGATIVE_IDS, "eth-getwork", "gbt", "stratum", "bad-command", "bad-levin"],
)
def test_ignores_other_traffic(client: bytes, server: bytes) -> None:
    assert feed_stream(cryptonode.detect, client, server) is None


_NODE_CALL = b'{"id":1,"jsonrpc":"2.0","method":"eth_chainId","params":[]}\n'
_WORK_CALL = b'{"id":2,"jsonrpc":"2.0","method":"eth_getWork","params":[]}\n'


@pytest.mark.parametrize("first_node", [True, False])
def test_mining_wins_over_a_node_call_however_the_stream_is_cut(first_node: bool) -> None:
    """A node call seen first is still crypto-node for this detector alone, but the flow is mining: the engine
    keeps the mining finding whenever it comes (a crypto-node allowing policy must not let a miner through)."""
    stream = _NODE_CALL + _WORK_CALL if first_node else _WORK_CALL + _NODE_CALL
    detectors = build_detectors(shipped_lists()).tcp
    for cut in range(len(stream) + 1):
        inspector = FlowInspector(feeding.META, detectors)
        inspector.feed_stream(True, stream[:cut])
        inspector.feed_stream(True, stream[cut:])
        found = inspector.close()
        assert found is not None and found.category is Category.MINING, cut
    assert feed_stream(cryptonode.detect, _NODE_CALL + _WORK_CALL) == feed_stream(cryptonode.detect, _NODE_CALL)
