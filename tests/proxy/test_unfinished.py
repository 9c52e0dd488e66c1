"""egress/proxy/unfinished.py: an HTTP request head never finished, judged by the pool detectors at its end (red
team 16: `GET / HTTP/1.1`, a header, Stratum's lines, a reset, was the attacker's cheapest unrecorded attempt).
Real bytes: Stratum v1's subscribe and authorize (cpuminer), XMRig's login (its JSON-RPC `login`)."""

from __future__ import annotations

import pytest

from egress.detect.base import Category, Detector, FlowMeta, Transport
from egress.detect.names import make_name_detector
from egress.detect.registry import MINING
from egress.proxy.unfinished import head_lines, is_unfinished_head, pool_finding
from tests.lists import shipped_lists

STRATUM = (
    b'{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1"]}\n'
    b'{"id":2,"method":"mining.authorize","params":["rt16.worker","x"]}\n'
)
XMRIG_LOGIN = (
    b'{"id":1,"jsonrpc":"2.0","method":"login","params":{"login":"4AdUndXHHZ6cfufTMvppY6JwXNouMBzSkbLYfpAV5Usx3skx'
    b'NgYeYTRj5UzqtReoS44qo9mtmXCqY45DJ852K5Jv2684Rge","pass":"x","agent":"XMRig/6.21.0 (Linux x86_64) libuv/1.44.2 '
    b'gcc/12.2.0","algo":["rx/0"]}}\n'
)
HEAD = b"GET / HTTP/1.1\r\nHost: allowed.lab\r\n"
META = FlowMeta(Transport.TCP, "10.203.1.2", 40000, "198.18.10.3", 3333)
ENDED = "the client reset the connection"


def _detectors() -> tuple[Detector, ...]:
    return (*MINING, make_name_detector(shipped_lists()))


@pytest.mark.parametrize(
    ("data", "unfinished"),
    [
        (HEAD, True),
        (HEAD + STRATUM, True),
        (b"POST /x HTTP/1.1\nX-A: b\n" + STRATUM[:30], True),  # bare newlines, a line cut
        (HEAD + b"\r\n", False),  # whole
        (HEAD + b"\r\n" + STRATUM, False),  # whole, a body after it: the HTTP paths judge it
        (b"GET / HTTP/1.1\n\n" + STRATUM, False),
        (b"GET / HTTP/1.1\r\nA: b\r\n\r" + b"\n", False),
        (STRATUM, False),  # no request line: no head
        (b"HELLO / HTTP/1.1\r\n" + STRATUM, False),  # no known method
    ],
)
def test_what_an_unfinished_head_is(data: bytes, unfinished: bool) -> None:
    assert is_unfinished_head(data) is unfinished


@pytest.mark.parametrize(
    ("data", "protocol"),
    [
        (HEAD + STRATUM, "stratum-v1"),
        (b"GET / HTTP/1.1\r\n" + STRATUM, "stratum-v1"),
        (HEAD + STRATUM[:60], "stratum-v1"),  # the subscribe cut where the head ended
        (HEAD + XMRIG_LOGIN, "cryptonote-stratum"),
        (HEAD + b"X-Pad: " + STRATUM.replace(b"\n", b" ") + b"\r\n", "stratum-v1"),  # in a header's value
    ],
)
def test_an_unfinished_head_with_a_pools_lines_is_mining(data: bytes, protocol: str) -> None:
    found = pool_finding(data, META, _detectors(), ENDED)
    assert found is not None and found.category is Category.MINING and found.protocol == protocol, found
    assert found.evidence.startswith(f"HTTP request head never finished ({ENDED}): "), found.evidence


@pytest.mark.parametrize(
    "data",
    [
        HEAD,
        HEAD + b"User-Agent: curl/8.5.0\r\nAccept: */*\r\nX-Mining: no",  # an ordinary request, cut
        b"POST /api/mining HTTP/1.1\r\nHost: allowed.lab\r\nContent-Type: application/json\r\n",
        HEAD + b"\r\n" + STRATUM,  # whole: not this module's (the HTTP paths judge the body)
        STRATUM,  # not a head (the stream paths judge it)
    ],
)
def test_no_pool_content_or_no_unfinished_head_is_nothing(data: bytes) -> None:
    assert pool_finding(data, META, _detectors(), ENDED) is None


def test_the_lines_the_detectors_read() -> None:
    data = b"GET /a HTTP/1.1\r\nHost: allowed.lab\r\nX-Pad:  {1}\r\n" + STRATUM[:20]
    assert head_lines(data) == b"/a\nallowed.lab\n{1}\n" + STRATUM[:20] + b"\n"
