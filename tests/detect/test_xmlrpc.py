"""Tests for the XML pool-call detector: XML-RPC and SOAP calls and answers, each lenient spelling a server reads
(red team 4), found on raw streams and in HTTP bodies; benign XML not."""

from __future__ import annotations

import gzip
import zlib
from xmlrpc import client as rpc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egress.detect import xmlrpc
from egress.detect.base import MORE, Category, Finding, FlowView, Result
from tests.budget import examples
from tests.detect.feeding import META, feed_every_split, feed_stream
from tests.detect.test_tls import TOR_CLIENT_HELLO, TOR_SERVER_FLIGHT
from tests.security.fuzz_targets import feed_pieces

SUBMIT = rpc.dumps(("wallet.worker", "job1", "00000000", "5f5e1000", "1a2b3c4d"), "mining.submit").encode()
SUBSCRIBED = rpc.dumps(([["mining.notify", "ae6812eb"], "08000002", 4],), methodresponse=True).encode()


def _post(body: bytes, *fields: bytes) -> bytes:
    head = b"POST /RPC2 HTTP/1.1\r\nHost: pool\r\nContent-Type: text/xml\r\n" + b"".join(f + b"\r\n" for f in fields)
    if not any(field.lower().startswith(b"transfer-encoding") for field in fields):
        head += b"Content-Length: %d\r\n" % len(body)
    return head + b"\r\n" + body


def _chunked(body: bytes, size: int = 5) -> bytes:
    pieces = b"".join(
        b"%x\r\n%s\r\n" % (len(body[at : at + size]), body[at : at + size]) for at in range(0, len(body), size)
    )
    return _post(pieces + b"0\r\n\r\n", b"Transfer-Encoding: chunked")


def _call(name: bytes) -> bytes:
    return (
        b"<?xml version='1.0'?>\n<methodCall>\n<methodName>" + name + b"</methodName>\n<params></params></methodCall>"
    )


def _soap(inner: bytes) -> bytes:
    return (
        b'<?xml version="1.0"?><soap:Envelope xmlns:soap="http://www.w3.org/2003/05/soap-envelope"><soap:Body>'
        + inner
        + b"</soap:Body></soap:Envelope>"
    )


def _struct(**members: str) -> bytes:
    return rpc.dumps((members,), methodresponse=True).encode()


CALLS = {
    "stdlib-client": SUBMIT,
    "http-post": _post(SUBMIT),
    "chunked-cut-in-name": _chunked(SUBMIT),
    "gzip": _post(gzip.compress(SUBMIT), b"Content-Encoding: gzip"),
    "deflate": _post(zlib.compress(SUBMIT), b"Content-Encoding: deflate"),
    "cut-across-keepalive-bodies": _post(SUBMIT[: SUBMIT.index(b"mining.") + 4])
    + _post(SUBMIT[SUBMIT.index(b"mining.") + 4 :]),
    "second-keepalive-request": _post(_call(b"system.listMethods")) + _post(SUBMIT),
    "decimal-reference": _call(b"mining&#46;submit"),
    "hex-reference": _call(b"&#x6d;ining&#x2E;subscribe"),
    "reference-without-semicolon": _call(b"mining&#46authorize"),
    "cdata": _call(b"<![CDATA[mining.submit]]>"),
    "cdata-and-comment-pieces": _call(b"mining<!-- pad -->.<![CDATA[sub]]><?pi x?>mit"),
    "blanks-around": _call(b"\n\t  mining.submit \r\n"),
    "generic-dispatcher": rpc.dumps(("mining.submit", "wallet.worker", "job1"), "call").encode(),
    "entity-after-a-bracket-in-the-subset": b'<!DOCTYPE m [<!ENTITY a "]"><!-- ] --><!ENTITY b "mining.submit">]>'
    + _call(b"&b;"),
    "internal-entity": b'<!DOCTYPE m [<!ENTITY a "mining.su"><!ENTITY b "&a;bmit">]>' + _call(b"&b;"),
    "prefix-and-attributes": b'<x:methodCall xmlns:x="u"><x:methodName lang="en">mining.submit</x:methodName>',
    "upper-case-tags": b"<METHODCALL><METHODNAME>mining.authorize</METHODNAME></METHODCALL>",
    "upper-case-name": _call(b"MINING.SUBMIT"),
    "unknown-child-restarts-text": _call(b"junk<i/>mining.submit"),
    "child-holding-text": _call(b"<i>mining.submit</i>"),
    "utf-16-with-bom": SUBMIT.decode()
    .replace("<?xml version='1.0'?>", "<?xml version='1.0' encoding='UTF-16'?>")
    .encode("utf-16"),
    "utf-16-be-without-bom": SUBMIT.decode().encode("utf-16-be"),
    "utf-8-bom": b"\xef\xbb\xbf" + SUBMIT,
    "after-junk-on-raw-stream": b"\x00\x01hello\n" + SUBMIT,
    "multicall": rpc.dumps(([{"methodName": "mining.submit", "params": ["w"]}],), "system.multicall").encode(),
    "soap-element": _soap(b'<m:mining.submit xmlns:m="urn:pool"><m:worker>w</m:worker></m:mining.submit>'),
    "soap-eth": _soap(b"<eth_submitWork><nonce>0x1</nonce></eth_submitWork>"),
    "soap-action-header": _post(_soap(b"<m:Submit/>"), b'SOAPAction: "urn:pool#mining.submit"'),
    "eth-getwork": _call(b"eth_getWork"),
    "getblocktemplate": _call(b"getblocktemplate"),
    "xmrig-login": rpc.dumps(({"login": "wallet", "pass": "x", "agent": "XMRig/6.21.0"},), "login").encode(),
    "xmrig-submit": rpc.dumps(({"id": "a", "job_id": "j", "nonce": "00", "result": "ff"},), "submit").encode(),
    "xmrig-keepalived": _call(b"keepalived"),
    "percent-encoded-target": b"GET /RPC2?" + b"%3CmethodName%3Emining.submit%3C%2FmethodName%3E HTTP/1.1\r\n\r\n",
}
ANSWERS = {
    "subscribe-answer": SUBSCRIBED,
    "xmrig-job": _struct(job_id="j1", blob="0707", target="b88d0600"),
    "pool-notification-over-http": b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(_call(b"mining.notify"))
    + _call(b"mining.notify"),
}
BENIGN = {
    "wordpress": rpc.dumps((1, "admin", "pw", {"number": 10}), "wp.getPosts").encode(),
    "list-methods": _call(b"system.listMethods"),
    "methods-listed": rpc.dumps((["blog.mining.news", "system.listMethods"],), methodresponse=True).encode(),
    "post-about-mining": rpc.dumps(
        ({"title": "mining.com", "text": "getwork and mining.submit"},), "wp.newPost"
    ).encode(),
    "soap-weather": _soap(b'<w:GetWeather xmlns:w="urn:w"><w:City>Oslo</w:City></w:GetWeather>'),
    "soap-login": _soap(b"<login><user>alice</user><password>x</password></login>"),
    "rss": b'<?xml version="1.0"?><rss version="2.0"><channel><title>Mining news</title><item><title>'
    b"mining.submit explained</title><description>&lt;methodName&gt;mining.submit&lt;/methodName&gt;"
    b"</description></item></channel></rss>",
    "html-docs": b'<html><body><h3 id="mining.submit">mining.submit</h3><pre>&lt;methodCall&gt;&lt;methodName&gt;'
    b"mining.submit&lt;/methodName&gt;</pre><p>job_id, blob and target</p></body></html>",
    "xml-comment-only": _call(b"system.listMethods<!-- mining.submit -->"),
    "soap-keepalived-service": _soap(b"<GetService><keepalived><state>MASTER</state></keepalived></GetService>"),
    "title-mining-com": rpc.dumps(({"title": "mining.com", "tags": ["mining", "getblock"]},), "wp.newPost").encode(),
    "value-not-a-reply": rpc.dumps((["mining.submitter"],), methodresponse=True).encode(),
}


def _check(found: Result) -> None:
    assert isinstance(found, Finding), found
    assert (found.category, found.protocol, found.detector) == (Category.MINING, xmlrpc.PROTOCOL, xmlrpc.NAME)


@pytest.mark.parametrize("name", sorted(CALLS))
def test_finds_each_call(name: str) -> None:
    _check(feed_stream(xmlrpc.detect, CALLS[name]))


@pytest.mark.parametrize("name", sorted(ANSWERS))
def test_finds_the_pools_answers(name: str) -> None:
    _check(feed_stream(xmlrpc.detect, b"", ANSWERS[name]))


@pytest.mark.parametrize("name", sorted(BENIGN))
def test_benign_xml_is_not_mining(name: str) -> None:
    assert feed_stream(xmlrpc.detect, BENIGN[name], BENIGN[name]) is None


@pytest.mark.parametrize(
    "name", ["stdlib-client", "chunked-cut-in-name", "cdata-and-comment-pieces", "utf-16-with-bom"]
)
def test_same_answer_at_every_split(name: str) -> None:
    results = feed_every_split(xmlrpc.detect, CALLS[name])
    assert all(found == results[0] for found in results)
    _check(results[0])


def test_found_on_the_prefix_that_closes_the_name() -> None:
    """Incremental: MORE while the method's name may still grow, the finding once its end tag is in."""
    data = _post(SUBMIT)
    end = data.index(b"</methodName>") + len(b"</methodName>")
    view = FlowView(META)
    for size in range(0, end, 9):
        view.client = data[:size]
        assert xmlrpc.detect(view) is MORE
    view.client = data[:end]
    _check(xmlrpc.detect(view))


def test_encrypted_flow_is_none() -> None:
    """A whole TLS hello on both sides: the later bytes are encrypted, more cannot change the answer."""
    assert xmlrpc.detect(FlowView(META, TOR_CLIENT_HELLO, TOR_SERVER_FLIGHT)) is None


@pytest.mark.parametrize("step", [3, 64])
def test_incremental_equals_whole(step: int) -> None:
    """The memo is a function of the bytes: a view grown step by step answers each prefix as a fresh view does."""
    for name, data in (*CALLS.items(), *BENIGN.items()):
        grown = FlowView(META)
        for size in range(0, len(data) + step, step):
            grown.client = data[:size]
            assert xmlrpc.detect(grown) == xmlrpc.detect(FlowView(META, data[:size])), (name, size)
            if isinstance(xmlrpc.detect(FlowView(META, data[:size])), Finding):
                break


XML_TOKENS = [
    b"<", b">", b"</", b"<methodCall>", b"<methodName>", b"mining.submit", b"</methodName>", b"method", b"Name",
    b"Envelope", b"<s:", b"s:Body>", b"x" * 90, b"\x00", b" ", b"\r\n", b"HTTP/1.1 200 OK\r\n\r\n", SUBMIT[:70],
    b"POST / HTTP/1.1\r\nContent-Length: 90\r\n\r\n", SUBMIT[70:],
]  # fmt: skip


@settings(max_examples=examples(200), deadline=None)
@given(st.lists(st.sampled_from(XML_TOKENS) | st.binary(max_size=5), max_size=30).map(b"".join), st.data())
def test_grown_at_any_cuts_equals_a_fresh_view(stream: bytes, data: st.DataObject) -> None:
    """Tags, markup words before and after the first ``<``, HTTP heads, cut anywhere: each prefix of a view grown
    step by step answers as a fresh view of it (the ``<`` search goes on past the bytes known to hold none)."""
    points = sorted({*data.draw(st.lists(st.integers(1, max(len(stream), 1)), max_size=10)), len(stream)})
    grown = FlowView(META)
    for point in points:
        grown.client = stream[:point]
        fresh = xmlrpc.detect(FlowView(META, stream[:point]))
        assert xmlrpc.detect(grown) == fresh, (point, stream[:point])
        if isinstance(fresh, Finding):
            break


def test_grown_byte_by_byte_equals_a_fresh_view() -> None:
    """Every byte a prefix of its own, so that a ``<`` is the first new byte after bytes that hold none."""
    for stream in (b"methodResponse" + b"x" * 70 + b"<", b"<!-- -->methodName </x>" + b"y" * 70 + b"<", SUBMIT):
        grown = FlowView(META)
        for point in range(1, len(stream) + 1):
            grown.client = stream[:point]
            assert xmlrpc.detect(grown) == xmlrpc.detect(FlowView(META, stream[:point])), (point, stream[:point])


def test_asked_again_after_a_finding_answers_as_a_fresh_view() -> None:
    """A caller that asks again once the client's call was found, with only the server's side grown, gets the
    finding a fresh view of the same bytes gets (the fuzz target's invariant: the engine would have stopped)."""
    events = [(True, SUBMIT[:60]), (True, SUBMIT[60:]), (False, b"HTTP/1.1 200 OK\r\n"), (False, b"\r\n<x/>")]
    for step in feed_pieces((xmlrpc.detect,), META, events):
        for grown, fresh in step:
            assert grown == fresh
    assert isinstance(feed_pieces((xmlrpc.detect,), META, events)[-1][0][0], Finding)


def test_markup_word_completed_by_bytes_without_a_tag() -> None:
    """``</s:Envelo`` then ``pe>``: the word is whole only with bytes that hold no ``<`` (the search for it must
    look back past the last stop, as a fresh view reads the whole)."""
    events = [(False, b"<eth_submitWork/></s:Envelo"), (False, b"pe>")]
    steps = feed_pieces((xmlrpc.detect,), META, events)
    assert all(grown == fresh for step in steps for grown, fresh in step)
    _check(steps[-1][0][0])
