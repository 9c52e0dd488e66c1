"""Tests for the Ethereum pool-mining (eth-proxy stratum / HTTP getWork) detector."""

from __future__ import annotations

import pytest

from egress.detect import ethstratum
from egress.detect.base import Category, Finding
from tests.detect.feeding import feed_every_split, feed_stream
from tests.detect.test_jsonrpc import NEGATIVE_IDS, NEGATIVES

# peafowl_ethereum.pcap (to 94.23.36.128:4444): login and first getWork, and the pool's answers.
ETH_LOGIN = (
    b'{"worker": "eth1.0", "jsonrpc": "2.0", "params": ["0x0fccfff9e61a230ff380530c6827caf4759337c6.rig2", "x"], '
    b'"id": 2, "method": "eth_submitLogin"}\n{"worker": "", "jsonrpc": "2.0", "params": [], "id": 3, '
    b'"method": "eth_getWork"}\n'
)
ETH_WORK = (
    b'{"id":2,"jsonrpc":"2.0","result":true}\n{"id":3,"jsonrpc":"2.0","result":["0x22b597d7bf24ef9a605a5d4fb6f7e155'
    b'b7d0ce28ba6a9aa9eda6b74b34685d71","0x88615dc9f6fe84975a471ca044adecdfde8c8fcdde97d2a3416254d590c52d0c","0x01'
    b'12e0be826d694b2e62d01511f12a6061fbaec8bc02357593e70e52ba","0x492609"]}\n'
)
# nesfit_pool.eth.pp.ua.pcapng: getWork over HTTP, and the chunked work package the pool answers with.
HTTP_HASHRATE = (
    b"POST /?miner=30@0x4b999ba68e017854ffb6b494bc2ddb9ef02bd745@OptionalRigName HTTP/1.1\r\nHost: pool.eth.pp.ua\r\n"
    b"Accept: */*\r\nContent-Type: application/json\r\ncharsets: utf-8\r\nContent-Length: 141\r\n\r\n"
    b'{"id":1,"jsonrpc":"2.0","method":"eth_submitHashrate","params":["0x0","0x595394dfcf62b8f99cf36dae818fa985a394c6'
    b'ded5d59f8711e93d445ad257a0"]}\n'
)
HTTP_WORK = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n\r\nf2\r\n"
    b'{"id":1,"jsonrpc":"2.0","result":["0xd49408f639581e7c4daffd1b20ee981139ca96694a7e6460dad17a9bb45efcf6","0x71a'
    b'56feffb6f10ea9d76e1a9464eb0abd86e4349ae98fb794923a65b650282a3","0x000000005ba03f80cf23190f76455c5b50637575fe8f'
    b'983eab6727314d04c63e"]}\r\n0\r\n\r\n'
)
# peafowl_ethereum-js-http.pcap: a wallet asking a geth node for its version (crypto-node, not mining).
GETH_VERSION = (
    b"POST / HTTP/1.1\r\nHost: localhost:8545\r\nUser-Agent: curl/7.56.1\r\nAccept: */*\r\n"
    b"Content-Type: application/json\r\nContent-Length: 66\r\n\r\n"
    b'{"id":1,"jsonrpc":"2.0","method":"web3_clientVersion","params":[]}'
)


@pytest.mark.parametrize(
    ("client", "server", "protocol"),
    [
        (ETH_LOGIN, ETH_WORK, "ethereum-stratum"),
        (ETH_WORK, b"", "ethereum-stratum"),
        (HTTP_HASHRATE, HTTP_WORK, "ethereum-getwork-http"),
        (HTTP_WORK, b"", "ethereum-getwork-http"),
        (
            b'{"id":1,"method":"mining.subscribe","params":["ethminer","EthereumStratum/1.0.0"]}\n',
            b"",
            "ethereum-stratum",
        ),
    ],
    ids=["login", "server-work", "http", "http-server-work", "nicehash-subscribe"],
)
def test_finds_eth_mining_at_every_split(client: bytes, server: bytes, protocol: str) -> None:
    results = feed_every_split(ethstratum.detect, client, server)
    assert all(result == results[0] for result in results)
    finding = results[0]
    assert isinstance(finding, Finding)
    assert (finding.category, finding.protocol, finding.detector) == (Category.MINING, protocol, "ethstratum")


@pytest.mark.parametrize(
    ("client", "server"),
    [
        *NEGATIVES,
        (GETH_VERSION, b""),
        (
            b'{"jsonrpc":"2.0","method":"eth_getBalance","params":["0x407d73d8a49eeb85d32cf465507dd71d507100c1"],"id":1}',
            b"",
        ),
        (b'{"jsonrpc":"2.0","id":1,"result":["0xabc","0xdef"]}\n', b""),
    ],
    ids=[*NEGATIVE_IDS, "geth-version", "get-balance", "short-hashes"],
)
def test_ignores_other_traffic(client: bytes, server: bytes) -> None:
    assert feed_stream(ethstratum.detect, client, server) is None
