"""Stratum written as lenient JSON (red team 3): each shape a lenient pool reads is read by the detectors too."""

from __future__ import annotations

import pytest

from egress.detect import cryptonote, jsonrpc, stratum
from egress.detect.base import Category
from egress.detect.jsonscan import has_key, methods
from tests.detect.feeding import feed_every_split, feed_stream

SUBSCRIBE = b'{"id":1,"method":"mining.subscribe","params":["cpuminer/2.5.1"]}\n'
SHAPES = {
    "comment-after-key": b'{"id":1,"method"/**/:"mining.subscribe","params":[]}\n',
    "comment-with-structure": b'{"id":1,"method"/* }, "x": [ */:"mining.subscribe","params":[]}\n',
    "comment-after-colon": b'{"id":1,"method": /* c */ "mining.subscribe","params":[]}\n',
    "line-comment-before-colon": b'{"id":1,"method" // the call\n: "mining.subscribe","params":[]}\n',
    "line-comments-between": b'{"id":1, // one\n"method":"mining.subscribe", // two\n"params":[]}\n',
    "unquoted-keys": b'{id:1,method:"mining.subscribe",params:[]}\n',
    "unquoted-after-comment": b"{id:1,/* c */method:'mining.subscribe',params:[]}\n",
    "single-quotes": b"{'id':1,'method':'mining.subscribe','params':[]}\n",
    "hex-escapes": b'{"id":1,"method":"min\\x69ng.subscribe","params":[]}\n',
    "hex-escape-in-key": b'{"id":1,"meth\\x6fd":"mining.subscribe","params":[]}\n',
    "upper-u-escape": b'{"id":1,"method":"min\\U0069ng.subscribe","params":[]}\n',
    "upper-u-escape-8": b'{"id":1,"method":"min\\U00000069ng.subscribe","params":[]}\n',
    "key-in-capitals": b'{"id":1,"METHOD":"mining.subscribe","params":[]}\n',
    "key-mixed-case": b"{Id:1,MeThOd:'mining.subscribe',Params:[]}\n",
    "all-at-once": b"{id:1,MeThOd/* , */:'min\\x69ng.subscribe',params:['cpuminer/2.5.1']}\n",
}


def test_plain_is_the_control() -> None:
    assert feed_stream(stratum.detect, SUBSCRIBE) is not None


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_each_lenient_shape_is_read(shape: str) -> None:
    found = feed_stream(stratum.detect, SHAPES[shape])
    assert found is not None and found.category is Category.MINING, shape


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_each_lenient_shape_ignores_segmentation(shape: str) -> None:
    results = feed_every_split(stratum.detect, SHAPES[shape])
    assert all(found == results[-1] for found in results) and results[-1] is not None


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_incremental_reading_is_the_whole_reading(shape: str) -> None:
    data = SHAPES[shape] * 3
    reading = jsonrpc.Reading()
    for end in range(1, len(data) + 1):
        assert reading.read(data[:end], False).calls == jsonrpc.payload(data[:end]).calls, (shape, end)


@pytest.mark.parametrize(
    "text",
    [
        b'{"payment_method":"mining.subscribe"}',  # another key that ends with the word
        b'{"methods":"mining.subscribe"}',
        b'{"id":1,"note":"methodology: mining.subscribe"}',
        b'{"id":1,"method" "mining.subscribe"}',  # no colon
        b'{"id":1,"method":mining.subscribe}',  # not a string
        b'{"id":1,"method":"mining.subscribe\'}',  # quotes that do not match
    ],
)
def test_not_a_method_key(text: bytes) -> None:
    assert [name for name, _ in methods(text)] == []


def test_an_unclosed_comment_waits() -> None:
    assert feed_stream(stratum.detect, b'{"id":1,"method"/* still open :"mining.subscribe"}\n') is None


def test_xmrig_login_in_single_quotes_and_capitals() -> None:
    login = b"{'id':1,'METHOD':'login','params':{'login':'w','pass':'x','agent':'XMRig/6.21.0'}}\n"
    assert [name for name, _ in methods(login)] == ["login"]
    found = feed_stream(cryptonote.detect, login)  # its keys too (`jsonscan.has_key`)
    assert found is not None and found.category is Category.MINING
    unquoted = b"{id:1,method:'submit',params:{id:'a',JOB_ID:'j1',nonce:'00',/* c */result:'ff'}}\n"
    assert feed_stream(cryptonote.detect, unquoted) is not None


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        (b'{"result":true}', b"result", True),
        (b"{'Result' : true}", b"result", True),
        (b"{result/* c */:true}", b"result", True),
        (b'{"note":"no result here"}', b"result", False),
        (b'{"results":1}', b"result", False),
        (b'{"x":"result"}', b"result", False),
    ],
)
def test_has_key_reads_lenient_keys(text: bytes, key: bytes, expected: bool) -> None:
    assert has_key(text, key) is expected


def test_a_string_never_spans_a_line() -> None:
    """A truncated HTTP body is followed by the bodies joined (`jsonrpc._http`): its open string must not swallow
    them (test_segmentation's case: cryptonode read ``eth_\\n{`` as a method at one cut and not whole)."""
    assert methods(b'{"id":1,"method":"eth_\n{"id":1,"jsonrpc":"2.0"}') == []
    assert [name for name, _ in methods(b'{"id":1,"method":"eth_\n{"method":"eth_getWork"}')] == ["eth_getWork"]
