"""Tests for the HTTP getwork/getblocktemplate mining detector."""

from __future__ import annotations

import pytest

from egress.detect import getwork
from egress.detect.base import Category, Finding
from tests.detect.feeding import feed_every_split, feed_stream
from tests.detect.test_jsonrpc import NEGATIVE_IDS, NEGATIVES

# nesfit_cgminer.g0.pcapng: cgminer 3.7.2's first request to an http:// pool URL, and one pool's answer.
CGMINER_GBT = (
    b"POST / HTTP/1.1\r\nAuthorization: Basic Qml0Y29pbjp4\r\nHost: 104.236.136.96:3333\r\nAccept: */*\r\n"
    b"Accept-Encoding: deflate, gzip\r\nContent-type: application/json\r\n"
    b"X-Mining-Extensions: longpoll midstate rollntime submitold\r\nContent-Length: 116\r\n"
    b"User-Agent: cgminer 3.7.2\r\n\r\n"
    b'{"id": 0, "method": "getblocktemplate", "params": [{"capabilities": ["coinbasetxn", "workid", '
    b'"coinbase/append"]}]}\n'
)
POOL_REDIRECT = (
    b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: 190\r\n"
    b"X-Stratum: stratum+tcp://us2.litecoinpool.org:3333\r\n\r\n"
    b'{"id":null,"result":null,"error":{"code":0,"message":"You are trying to connect to a Stratum server but you '
    b'are not using the right protocol. Make sure your URL starts with stratum+tcp://"}}'
)
# The same request body without the mining header (as a proxy that strips headers would pass it).
BARE_GBT = (
    b"POST / HTTP/1.1\r\nHost: 127.0.0.1:8332\r\nContent-Length: 116\r\n\r\n"
    b'{"id": 0, "method": "getblocktemplate", "params": [{"capabilities": ["coinbasetxn", "workid", '
    b'"coinbase/append"]}]}\n'
)
GETWORK_RESULT = (
    b'{"result":{"midstate":"4c8a8ab0","data":"00000001d9c4","hash1":"000000000000","target":"ffffffffffff"},'
    b'"error":null,"id":0}\n'
)


@pytest.mark.parametrize(
    ("client", "server", "protocol"),
    [
        (CGMINER_GBT, b"", "mining-http-header"),
        (b"", POOL_REDIRECT, "mining-http-header"),
        (BARE_GBT, b"", "getblocktemplate"),
        (b'{"method":"getwork","params":[],"id":0}\n', GETWORK_RESULT, "getwork"),
        (GETWORK_RESULT, b"", "getwork"),
        (
            b'{"jsonrpc":"2.0","id":"0","method":"get_block_template","params":{"wallet_address":"44GBH"}}',
            b"",
            "getblocktemplate",
        ),
    ],
    ids=["cgminer", "x-stratum", "bare-gbt", "getwork", "getwork-result", "monero-template"],
)
def test_finds_getwork_at_every_split(client: bytes, server: bytes, protocol: str) -> None:
    results = feed_every_split(getwork.detect, client, server)
    assert all(result == results[0] for result in results)
    finding = results[0]
    assert isinstance(finding, Finding)
    assert (finding.category, finding.protocol, finding.detector) == (Category.MINING, protocol, "getwork")


@pytest.mark.parametrize(
    ("client", "server"),
    [
        *NEGATIVES,
        (b'{"jsonrpc":"1.0","id":"curl","method":"getblockchaininfo","params":[]}', b""),
        (b'{"id":1,"result":{"midstate_like":"00","data":"11"}}\n', b""),
    ],
    ids=[*NEGATIVE_IDS, "bitcoin-rpc", "midstate-lookalike"],
)
def test_ignores_other_traffic(client: bytes, server: bytes) -> None:
    assert feed_stream(getwork.detect, client, server) is None
